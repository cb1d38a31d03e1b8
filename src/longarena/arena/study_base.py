"""What a study kind is: a function ``fn(config, out_dir, progress) -> StudyResult``
registered under a name with :func:`register` (see :mod:`longarena.arena.studies`).

Apart from :mod:`.studies` so that the kinds, which register themselves, and the module that
loads and runs them do not import each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class StudyResult:
    kind: str
    title: str
    #: JSON-able measurements (stored in results.json under the study)
    data: dict[str, Any]
    #: PNG files written into the report folder, relative to it
    figures: list[str]
    #: the body of the study's section in report.md (tables, a sentence on how to read them)
    markdown: str
    seconds: float = 0.0
    error: str | None = None


StudyFn = Callable[[dict[str, Any], Path, bool], StudyResult]
STUDIES: dict[str, StudyFn] = {}


def register(kind: str) -> Callable[[StudyFn], StudyFn]:
    def wrap(fn: StudyFn) -> StudyFn:
        STUDIES[kind] = fn
        return fn

    return wrap
