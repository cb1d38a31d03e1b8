"""Running a suite: per-cell cache and resume, run-folder versions, mixer selection, studies."""

from __future__ import annotations

import json

import pytest

from longarena.arena import runner
from longarena.arena.runner import FORMAT_VERSION, RunFolderError, cell_key, run_suite
from longarena.arena.suites import Cell
from longarena.config import ConfigError

from .conftest import tiny_suite


@pytest.fixture
def counted(monkeypatch):
    """Counts the (task, mixer) pairs that really train."""
    calls = []
    real = runner.run_cell

    def run_cell(cell, mixer, **kwargs):
        calls.append((cell.task, mixer))
        return real(cell, mixer, **kwargs)

    monkeypatch.setattr(runner, "run_cell", run_cell)
    return calls


def test_interrupted_run_resumes_only_missing_cells(tmp_path, fake_study, counted):
    suite = tiny_suite()
    first = run_suite(suite, tmp_path)
    expected = [("associative_recall", "attention"), ("associative_recall", "s4d"),
                ("majority", "attention"), ("majority", "s4d"), ("majority", "perceiver")]
    assert counted == expected
    assert all(c.error is None and not c.cached for c in first.cells)
    files = sorted((tmp_path / "cells").glob("*.json"))
    assert len(files) == 5
    assert len(fake_study) == 1

    # an interruption after all but one cell: that cell's file is missing
    missing = next(f for f in files if f.name.startswith("majority__s4d__"))
    missing.unlink()
    counted.clear()
    second = run_suite(suite, tmp_path)
    assert counted == [("majority", "s4d")]
    assert len(fake_study) == 1  # the finished study is loaded too
    assert [c.cached for c in second.cells] == [True, True, True, False, True]
    # loaded results are the stored ones, not re-measured
    before = {(c.task, c.mixer): c.accuracy for c in first.cells}
    assert all(before[(c.task, c.mixer)] == c.accuracy for c in second.cells)
    assert second.studies[0].cached and second.studies[0].result.data == {"slope": 2}

    counted.clear()
    run_suite(suite, tmp_path, fresh=True, only=["s4d"])
    assert counted == [("associative_recall", "s4d"), ("majority", "s4d")] and len(fake_study) == 2


def test_cache_key_follows_what_decides_the_result(tmp_path):
    suite = tiny_suite()
    cell = suite.cells[0]
    key = cell_key(cell, "attention")
    assert key == cell_key(cell.replace(mixers=("attention",)), "attention")  # other mixers don't matter
    assert key != cell_key(cell, "s4d")
    assert key != cell_key(cell.replace(train={**cell.train, "steps": 3}), "attention")
    assert key != cell_key(cell.replace(mixer_overrides={"attention": {"n_heads": 4}}), "attention")
    assert key != cell_key(cell.replace(task_config={**cell.task_config, "seed": 1}), "attention")
    # an explicit default is the same cell as an omitted one
    assert key == cell_key(cell.replace(train={**cell.train, "lr": 3e-3}), "attention")


def test_corrupt_cell_file_is_rerun(tmp_path, counted):
    suite = tiny_suite(cells=tiny_suite().cells[:1], studies=())
    run_suite(suite, tmp_path)
    path = next((tmp_path / "cells").glob("associative_recall__s4d__*.json"))
    path.write_text("{ not json")
    counted.clear()
    with pytest.warns(UserWarning, match=rf"cached result {path} is not valid JSON"):
        run_suite(suite, tmp_path)
    assert counted == [("associative_recall", "s4d")]
    assert json.loads(path.read_text())["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("result"),
    lambda d: d["result"].pop("accuracy"),
    lambda d: d["result"].update(accuracy="high"),
    lambda d: d["result"].update(accuracy=7.5),
    lambda d: d["result"].update(accuracy=float("nan")),
    lambda d: d["result"].update(loss=float("inf")),
    lambda d: d["result"].update(surprise=1),
    lambda d: d["result"].update(parameters=-3),
    lambda d: d["result"].update(curve=[[1, "x"]]),
    lambda d: d.update(key="0" * 16),
    lambda d: d.clear(),
], ids=["no-result", "no-accuracy", "accuracy-str", "accuracy-7.5", "accuracy-nan", "loss-inf", "extra-field",
        "negative-parameters", "bad-curve", "other-key", "empty"])
def test_a_wrong_cached_cell_is_rerun_with_a_warning_naming_it(tmp_path, counted, damage):
    suite = tiny_suite(cells=tiny_suite().cells[:1], studies=())
    first = run_suite(suite, tmp_path)
    path = next((tmp_path / "cells").glob("associative_recall__s4d__*.json"))
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))  # valid JSON (NaN and inf as Python writes them), wrong content
    counted.clear()
    with pytest.warns(UserWarning, match=rf"cached result {path} .*; running it again"):
        second = run_suite(suite, tmp_path)
    assert counted == [("associative_recall", "s4d")]
    assert [c.cached for c in second.cells] == [True, False]
    assert 0 <= second.cells[1].accuracy <= 1 and first.cells[0].accuracy == second.cells[0].accuracy
    assert json.loads(path.read_text())["result"]["accuracy"] == second.cells[1].accuracy


def test_failed_cells_are_reported_not_cached(tmp_path, counted):
    cell = Cell(task="majority", task_config=dict(num_classes=3, length=8, n_train=16, n_validation=8),
                mixers=("attention",), d_model=16, n_layers=1, mixer_overrides={"attention": {"n_heads": 3}},
                train=dict(steps=1, batch_size=4, warmup=1, eval_batches=1))
    run = run_suite(tiny_suite(cells=(cell,), studies=()), tmp_path)
    assert run.cells[0].error and "n_heads" in run.cells[0].error
    assert not list((tmp_path / "cells").glob("*.json"))
    assert "## Errors" in (tmp_path / "report.md").read_text()


def test_run_folders_of_other_formats_are_refused(tmp_path):
    suite = tiny_suite(cells=(), studies=())
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"suite": {}, "results": []}))  # the first arena's layout
    with pytest.raises(RunFolderError, match="older LongArena.*--fresh"):
        run_suite(suite, old)
    run_suite(suite, old, fresh=True)
    assert json.loads((old / "arena.json").read_text())["format_version"] == FORMAT_VERSION
    run_suite(suite, old)  # now current

    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "arena.json").write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(RunFolderError, match="newer LongArena"):
        run_suite(suite, newer, fresh=True)


def test_selected_mixers_must_be_in_the_suite(tmp_path, counted):
    suite = tiny_suite(studies=())
    run = run_suite(suite, None, only=["s4d"])
    assert counted == [("associative_recall", "s4d"), ("majority", "s4d")]
    assert run.selected == ["s4d"]
    with pytest.raises(ConfigError, match="unknown mixer.*mambo.*known mixers: .*mamba"):
        run_suite(suite, None, only=["mambo"])
    with pytest.raises(ConfigError, match="not in suite.*'mamba'.*compares attention, perceiver, s4d"):
        run_suite(suite, None, only=["mamba"])


def test_studies_record_errors_and_keep_going(tmp_path, fake_study):
    run = run_suite(tiny_suite(cells=()), tmp_path)
    fake, unknown, broken = (s.result for s in run.studies)
    assert fake.error is None and fake.figures == ["line.png"]
    assert (tmp_path / run.studies[0].folder / "line.png").is_file()
    assert "unknown study 'not_a_study'" in unknown.error and "fake" in unknown.error
    assert "RuntimeError: the broken study always fails" == broken.error
    assert run.studies[2].spec.title == "Broken"
    # failed studies are not cached: the next run tries them again
    assert not (tmp_path / run.studies[2].folder / "result.json").exists()


def test_loss_curve_is_window_means():
    history = [{"step": i + 1, "loss": float(i)} for i in range(130)]
    curve = runner._curve(history)
    assert len(curve) <= runner.CURVE_POINTS
    stride = 3  # ceil(130 / 60)
    assert curve[0] == [3.0, 1.0] and curve[1] == [6.0, 4.0]
    assert curve[-1] == [130.0, 129.0]  # the last, shorter window
    assert len(curve) == -(-130 // stride)
    assert runner._curve([]) == []


def test_suite_threads_apply_while_it_runs(monkeypatch):
    import torch

    seen = []
    monkeypatch.setattr(runner, "run_cell", lambda cell, mixer, **kw: seen.append(torch.get_num_threads())
                        or runner.CellResult(cell.task, mixer, 0.5, 1.0, 1, None, 0.0))
    before = torch.get_num_threads()
    suite = tiny_suite(cells=tiny_suite().cells[:1], studies=(), threads=1)
    run_suite(suite, None)
    assert seen == [1, 1] and torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        tiny_suite(threads=0)
