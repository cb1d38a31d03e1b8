"""Every eval runs, unchanged, on a small LongArena LM checkpoint and writes its run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longarena import evals
from longarena.cli.evals import new_run_dir
from longarena.evals import runners
from longarena.evals.adapter import EvalError, LongArenaAdapter
from longarena.models import checkpoint
from longarena.registry import UnknownNameError


@pytest.fixture(scope="module")
def ckpt(tiny_longarena, tmp_path_factory):
    return str(checkpoint.save(tiny_longarena, tmp_path_factory.mktemp("ckpt") / "tiny"))


def _files(out):
    for f in map(Path, out["files"]):
        assert json.loads(f.read_text()) if f.suffix == ".json" else f.read_bytes()[:4] == b"\x89PNG"
    return out


def test_registry_names():
    assert evals.names() == sorted(
        ["niah", "passkey", "lost-in-middle", "ppl", "lambada", "longbench", "induction"]
    )
    assert evals.get("ppl") is runners.run_ppl
    with pytest.raises(UnknownNameError, match="known evals"):
        evals.get("mmlu")
    assert all(evals.summaries().values())


def test_load_model_specs(ckpt, tmp_path):
    a = runners.load_model(ckpt, max_length=128)
    assert isinstance(a, LongArenaAdapter) and a.max_length == 128
    with pytest.raises(EvalError, match="unknown model"):
        runners.load_model(str(tmp_path / "nowhere"))
    b = runners.load_model(ckpt, extend="linear:2")
    ids = a.encode("positions are interpolated now, so the losses move")
    assert b.name.endswith("+linear:2")
    assert not a.token_losses(ids).allclose(b.token_losses(ids))


def test_all_evals_on_a_longarena_checkpoint(ckpt, tmp_path):
    progress_calls = []
    progress = lambda d, t, m: progress_calls.append((d, t))
    out = _files(runners.run_passkey(ckpt, tmp_path / "pk", lengths=(400,), depths=(0.0, 1.0), progress=progress))
    assert out["eval"] == "passkey" and progress_calls[-1] == (2, 2)
    assert json.loads((tmp_path / "pk" / "run.json").read_text())["args"]["lengths"] == [400]

    _files(runners.run_lost_in_middle(ckpt, tmp_path / "lim", num_pairs=(3,), samples=1))

    text = tmp_path / "book.txt"
    text.write_text("Of Mans First Disobedience, and the Fruit Of that Forbidden Tree. " * 20)
    out = _files(
        runners.run_ppl(ckpt, tmp_path / "ppl", lengths=(64, 128), text=str(text), methods=("none", "linear:2"))
    )
    assert [r["method"] for r in out["summary"]["table"]] == ["none", "none", "linear:2", "linear:2"]

    lam = tmp_path / "lambada.jsonl"
    lam.write_text(json.dumps({"text": "the cat sat on the mat"}) + "\n")
    out = _files(runners.run_lambada(ckpt, tmp_path / "lam", path=lam))
    assert out["summary"]["n"] == 1

    lb = tmp_path / "lb"
    lb.mkdir()
    (lb / "passage_count.jsonl").write_text(
        json.dumps({"input": "", "context": "p1 p2", "answers": ["2"]}) + "\n"
    )
    out = _files(runners.run_longbench(ckpt, tmp_path / "lbrun", folder=lb))
    assert out["summary"]["table"][0]["task"] == "passage_count"

    out = _files(
        runners.run_induction(ckpt, tmp_path / "ind", seq_len=8, batch=1, icl_text=str(text), icl_documents=1)
    )
    assert "icl_score" in out["summary"] and len(out["files"]) == 2


def test_run_dir_and_method_guard(tiny_longarena, tmp_path):
    d = new_run_dir("niah", tmp_path)
    assert d.is_dir() and d.name.startswith("eval-niah-")
    with pytest.raises(EvalError, match="pass the model spec"):
        runners.run_ppl(LongArenaAdapter(tiny_longarena), tmp_path / "x", methods=("none", "yarn:2"))
