"""`longarena arena`: the smoke suite end to end, resuming, and bad names."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from longarena.cli import app

runner = CliRunner()


def test_arena_smoke_suite_writes_a_report(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGARENA_CACHE", str(tmp_path / "cache"))  # the ListOps split is cached
    result = runner.invoke(app, ["arena", "--suite", "smoke", "--out", str(tmp_path), "--mixers", "attention"], terminal_width=200)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "results.json").read_text())
    cells = {(r["task"], r["mixer"]) for r in data["cells"]}
    assert cells == {("associative_recall", "attention"), ("listops", "attention")}
    assert all(r["error"] is None and 0.0 <= r["accuracy"] <= 1.0 for r in data["cells"])
    assert "| attention |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.html").is_file() and (tmp_path / "accuracy_matrix.png").is_file()
    again = runner.invoke(app, ["arena", "--suite", "smoke", "--out", str(tmp_path), "--only", "attention"], terminal_width=200)
    assert again.exit_code == 0, again.output
    assert all(r["cached"] for r in json.loads((tmp_path / "results.json").read_text())["cells"])


def test_arena_bad_input_is_explained(tmp_path):
    bad = runner.invoke(app, ["arena", "--suite", "huge"])
    assert bad.exit_code == 2 and "known suites" in bad.output
    bad = runner.invoke(app, ["arena", "--suite", "smoke", "--mixers", "mambo", "--out", str(tmp_path)], terminal_width=200)
    assert bad.exit_code == 2 and "known mixers" in bad.output
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text("{}")
    bad = runner.invoke(app, ["arena", "--suite", "smoke", "--out", str(tmp_path / "old")], terminal_width=200)
    assert bad.exit_code == 2 and "--fresh" in bad.output
