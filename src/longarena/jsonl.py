"""JSON Lines logs (``metrics.jsonl``), read back with every problem named by file and line.

A log is appended one line at a time, so a process killed mid-append leaves its last line
torn: that line is dropped with a warning. Any other line that does not parse was damaged
or edited, and is an error: guessing what it held would silently change the run's record.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any


class CorruptFileError(ValueError):
    """A file a run reads back does not hold what it should."""


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one per non-blank line, a torn last line dropped."""
    path = Path(path)
    # split the bytes, not the text: a tear can cut a multi-byte character in half
    lines = [(n, raw) for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1) if raw.strip()]
    records = []
    for i, (n, raw) in enumerate(lines):
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both
            if i == len(lines) - 1:
                warnings.warn(
                    f"{path}:{n} is torn (a write cut short by a kill: {exc}); dropped it and kept "
                    f"the {len(records)} records before it",
                    stacklevel=2,
                )
                break
            raise CorruptFileError(
                f"{path}:{n} is not valid JSON ({exc}). Only the last line can be torn by a kill, so "
                f"this file was damaged or edited: repair or delete that line"
            ) from exc
        if not isinstance(record, dict):
            raise CorruptFileError(
                f"{path}:{n} holds a JSON {type(record).__name__}, expected an object (one record per "
                f"line): repair or delete that line"
            )
        records.append(record)
    return records
