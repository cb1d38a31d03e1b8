"""``longarena train``: config files, presets and overrides; a run killed with SIGKILL and
resumed ends exactly where an uninterrupted run does; bad input is explained."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from longarena.cli import app
from longarena.train.compare import compare

runner = CliRunner()

RUN_YAML = """\
task: associative_recall
task_config: {vocab_size: 16, num_pairs: 2, num_queries: 2, n_train: 256, n_validation: 32}
model: {d_model: 16, n_layers: 1, mixer: {attention: {n_heads: 2}}}
train: {steps: STEPS, batch_size: 8, lr: 3e-3, warmup: 10, checkpoint_every: 50, eval_every: 100, eval_batches: 1, device: cpu}
"""


def _write(tmp_path: Path, steps: int) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(RUN_YAML.replace("STEPS", str(steps)))
    return path


def _train(*args: str):
    return runner.invoke(app, ["train", *args], terminal_width=200)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    config = _write(tmp_path, steps=250)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "longarena.cli", "train", "--config", str(config), "--out", str(killed)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint" / "state.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run ended before its first checkpoint: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    proc.stderr.close()
    saved_at = json.loads((killed / "checkpoint" / "state.json").read_text())["step"]
    assert saved_at < 250 and not (killed / "model.safetensors").exists()

    resumed = _train("--out", str(killed), "--resume")
    assert resumed.exit_code == 0, resumed.output
    whole = _train("--config", str(config), "--out", str(tmp_path / "whole"))
    assert whole.exit_code == 0, whole.output

    a, b = _metrics(tmp_path / "whole"), _metrics(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b]  # no step lost or logged twice
    assert [r.get("loss") for r in a] == [r.get("loss") for r in b]
    assert a[-1]["val_loss"] == b[-1]["val_loss"]
    assert compare(a, b)["max_rel_gap"] == 0.0 and compare(a, b)["same_steps"]
    wa, wb = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_config_file_set_and_options_layer_in_order(tmp_path):
    config = _write(tmp_path, steps=3)
    result = _train("--config", str(config), "--set", "train.steps=5", "--set", "model.d_model=24",
                    "--steps", "4", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["run"]["train"]["steps"] == 4 and saved["run"]["model"]["d_model"] == 24
    assert saved["config"]["d_model"] == 24 and saved["format_version"] == 1
    assert [r["step"] for r in _metrics(tmp_path / "run")] == [1, 2, 3, 4, 4]
    # the run folder's own config.json is a config file too
    again = _train("--config", str(tmp_path / "run" / "config.json"), "--out", str(tmp_path / "again"))
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again" / "config.json").read_text())["run"] == saved["run"]


def test_preset_with_overrides_trains(tmp_path):
    listed = _train("--list-presets")
    assert listed.exit_code == 0 and "lra/pathfinder32/s4" in listed.output and "lra/retrieval/bigbird" in listed.output
    result = _train("--preset", "lra/listops/s4", "--set", "model.d_model=16", "--set", "model.n_layers=1",
                    "--set", "task_config.n_train=16", "--set", "task_config.n_validation=8", "--set", "task_config.n_test=4",
                    "--set", "train.steps=2", "--set", "train.batch_size=4", "--set", "train.eval_batch_size=4",
                    "--set", "train.precision=fp32", "--set", "train.device=cpu", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "config.json").read_text())["run"]
    assert run["task"] == "listops" and run["model"]["mixer"]["s4"]["d_state"] == 64 and run["train"]["lr"] == 0.01
    # LRA presets score the whole test split at the end: n_test=4 examples in one batch
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test_accuracy"] * 4 == round(results["test_accuracy"] * 4) and "test accuracy" in result.output


def test_bad_input_is_explained(tmp_path):
    config = _write(tmp_path, steps=2)
    bad = _train("--config", str(config), "--set", "train.lrr=1")
    assert bad.exit_code == 2 and "train.lrr: unknown key" in bad.output
    bad = _train("--config", str(config), "--set", "model.d_model=abc")
    assert bad.exit_code == 2 and "model.d_model: expected int, got 'abc'" in bad.output
    bad = _train("--preset", "lra/listops/nope")
    assert bad.exit_code == 2 and "lra/listops/s4" in bad.output
    bad = _train("--config", str(config), "--tensorboard", "--out", str(tmp_path / "tb"))
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert bad.exit_code == 2 and "pip install tensorboard" in bad.output
    else:
        assert bad.exit_code == 0 and (tmp_path / "tb" / "tensorboard").is_dir()

    ok = _train("--config", str(config), "--out", str(tmp_path / "run"))
    assert ok.exit_code == 0, ok.output
    again = _train("--config", str(config), "--out", str(tmp_path / "run"))
    assert again.exit_code == 2 and "--resume" in again.output
    changed = _train("--out", str(tmp_path / "run"), "--resume", "--d-model", "32")
    assert changed.exit_code == 2 and "model.d_model (16 -> 32)" in changed.output
    longer = _train("--out", str(tmp_path / "run"), "--resume", "--steps", "3")
    assert longer.exit_code == 0 and "changed settings: train.steps" in longer.output
    assert [(r["step"], bool(r.get("final"))) for r in _metrics(tmp_path / "run")] == [(1, False), (2, False), (3, False), (3, True)]

    # a run folder written before run folders were versioned (the old --out layout)
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "run", old)
    meta = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "format_version"}))
    refused = _train("--out", str(old), "--resume")
    assert refused.exit_code == 2 and "format_version" in refused.output and "new run folder" in refused.output
    missing = _train("--out", str(tmp_path / "nothing"), "--resume")
    assert missing.exit_code == 2 and "nothing to resume" in missing.output
    (old / "config.json").write_text('{"format_version": 1, ')
    torn = _train("--out", str(old), "--resume")
    assert torn.exit_code == 2 and "config.json is not valid JSON" in torn.output.replace("\n", "")


def _torchrun(*args: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """``longarena train`` on two CPU processes (gloo); --standalone picks a free port."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "longarena.cli", "train", *args]
    return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, **popen)


def _run_two(*args: str, env: dict[str, str] | None = None) -> None:
    proc = _torchrun(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both training processes
        raise
    assert proc.returncode == 0, output.decode()[-4000:]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """torchrun with two CPU processes (gloo): each takes half of every batch; same losses."""
    config = tmp_path / "run.yaml"
    config.write_text(RUN_YAML.replace("STEPS", "30"))
    _run_two("--config", str(config), "--out", str(tmp_path / "two"))
    assert json.loads((tmp_path / "two" / "checkpoint" / "state.json").read_text())["processes"] == 2
    one = _train("--config", str(config), "--out", str(tmp_path / "one"))
    assert one.exit_code == 0, one.output
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r.get("loss", 0.0) for r in a] == pytest.approx([r.get("loss", 0.0) for r in b], rel=1e-5)
    assert a[-1]["val_loss"] == pytest.approx(b[-1]["val_loss"], rel=1e-5)
