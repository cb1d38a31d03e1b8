"""Arena studies: measurements a suite runs beside its training cells.

A cell trains one model per mixer on a task; a *study* is any other measurement whose result
belongs in the report: a speed/memory sweep, recall against state size, train-short-test-long
perplexity, a needle-in-a-haystack heatmap of a real LLM. Each study kind is a function

    fn(config: dict, out_dir: Path, progress: bool) -> StudyResult

registered under a name with :func:`register`; it writes its PNG figures into ``out_dir`` and
returns their file names (relative to ``out_dir``), JSON-able data for ``results.json`` and a
markdown section body for the report.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from longarena.arena.study_base import STUDIES, StudyFn, StudyResult, register
from longarena.config import ConfigError

__all__ = ["STUDIES", "StudyFn", "StudyResult", "names", "register", "run_study"]


def _load_builtin() -> None:
    """Import the built-in study kinds (they register themselves); lazy, as they pull in plotting."""
    import longarena.arena.study_kinds  # noqa: F401


def names() -> list[str]:
    _load_builtin()
    return sorted(STUDIES)


def run_study(kind: str, config: dict[str, Any], out_dir: str | Path, *, progress: bool = False) -> StudyResult:
    """Run one study; a failure, or an unknown kind, becomes a result with ``error`` set so the arena goes on."""
    _load_builtin()
    if kind not in STUDIES:
        message = f"unknown study {kind!r}; known studies: {', '.join(names()) or '(none)'}"
        return StudyResult(kind, kind, {}, [], "", 0.0, f"{ConfigError.__name__}: {message}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        result = STUDIES[kind](dict(config), out, progress)
    except Exception as exc:  # one failed study must not sink the report
        return StudyResult(kind, kind, {"traceback": traceback.format_exc(limit=5)}, [], "",
                           time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
    result.seconds = time.perf_counter() - start
    return result
