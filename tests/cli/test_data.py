"""The functions behind `longarena data list | show | make`."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from longarena.cli import data as data_cli
from longarena.tasks import listops


def test_list_tasks_names_kinds_and_summaries():
    rows = {name: (kind, summary) for name, kind, summary in data_cli.list_tasks()}
    for name in ("listops", "pathfinder32", "pathx", "mqar", "lra_text", "lra_retrieval", "lra_image"):
        assert name in rows and rows[name][1]
    assert rows["lra_retrieval"][0] == "retrieval" and rows["mqar"][0] == "lm"


def test_show_pathfinder_writes_pngs(tmp_path):
    paths = data_cli.show("pathfinder32", tmp_path, n=4, num_distractors=3)
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == 5 and all(p.exists() for p in paths)
    img = mpimg.imread(pngs[0])
    assert img.shape[:2] == (32, 32)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n"] == 4 and summary["label_counts"] == {"0": 2, "1": 2}


def test_show_listops_reports_lengths_and_operators(tmp_path):
    data_cli.show("listops", tmp_path, n=5, min_length=30, max_length=120)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n"] == 5 and 30 < summary["length_min"] <= summary["length_max"] < 120
    assert set(summary["operator_frequency"]) == set(listops.OPERATORS)
    lines = (tmp_path / "examples.txt").read_text().splitlines()
    for line in lines:
        label, text = line.split("\t")
        assert int(label.removeprefix("label=")) == listops.evaluate(listops.tokenize(text))


def test_show_lm_task_and_bad_arguments(tmp_path):
    paths = data_cli.show("mqar", tmp_path, n=2, vocab_size=32, num_pairs=2, length=16)
    assert {p.name for p in paths} == {"summary.json", "examples.txt"}
    assert json.loads((tmp_path / "summary.json").read_text())["scored_tokens_mean"] == 2
    with pytest.raises(ValueError, match="unknown split"):
        data_cli.show("mqar", tmp_path, split="dev")


def test_make_builds_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGARENA_CACHE", str(tmp_path))
    cfg = dict(min_length=30, max_length=120, n_train=6, n_validation=2, n_test=2)
    report = data_cli.make("listops", progress=False, workers=1, **cfg)
    assert [report[s]["n"] for s in ("train", "validation", "test")] == [6, 2, 2]
    assert all(tmp_path in Path(r["cache_file"]).parents for r in report.values())
    again = data_cli.make("listops", splits=("train",), progress=False, **cfg)
    assert again["train"]["cache_file"] == report["train"]["cache_file"]
    assert again["train"]["from_cache"] and not report["train"]["from_cache"]
