"""``python -m longarena.train.compare`` on damaged run folders."""

from __future__ import annotations

import pytest

from longarena.train.compare import main, read_metrics


def test_torn_and_damaged_metrics(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        run.mkdir()
        (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
    with (b / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "lo')
    with pytest.warns(UserWarning, match="metrics.jsonl:3 is torn"):
        assert read_metrics(b) == read_metrics(a)
        assert main([str(a), str(b)]) == 0
    (b / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0\n{"step": 2, "loss": 1.5}\n')
    assert main([str(a), str(b)]) == 2
    assert f"{b / 'metrics.jsonl'}:1 is not valid JSON" in capsys.readouterr().err
