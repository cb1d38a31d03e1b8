"""JSON Lines logs read back: a torn last line is dropped with a warning, any other bad line named."""

from __future__ import annotations

import pytest

from longarena.jsonl import CorruptFileError, read_records


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')
    with pytest.warns(UserWarning, match=rf"{path}:4 is torn .*kept the 2 records"):
        assert read_records(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"step": 2}\n')
    assert read_records(path) == [{"step": 1}, {"step": 2}]


def test_a_bad_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2 "loss": 1}\n{"step": 3}\n')
    with pytest.raises(CorruptFileError, match=rf"{path}:2 is not valid JSON .*repair or delete that line"):
        read_records(path)
    path.write_bytes(b'{"step": 1}\n\xff\xfe\n{"step": 3}\n')
    with pytest.raises(CorruptFileError, match=rf"{path}:2 is not valid JSON"):
        read_records(path)
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(CorruptFileError, match=rf"{path}:2 holds a JSON list, expected an object"):
        read_records(path)
