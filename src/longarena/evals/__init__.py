"""Evaluation runners and metrics: needle-in-a-haystack grids, lost-in-the-middle,
perplexity vs length, LAMBADA, LongBench, induction-head scores.
One small model adapter (``evals.adapter``) lets every runner evaluate LongArena LMs and
Hugging Face LMs; ``evals.runners`` holds the runners by name (what ``longarena eval <name>`` calls).

``names()`` lists the evals, ``get(name)`` returns its runner
``run(model, run_dir, **options) -> summary dict``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from longarena.registry import UnknownNameError


def names() -> list[str]:
    from longarena.evals.runners import EVALS

    return sorted(EVALS)


def get(name: str) -> Callable[..., dict[str, Any]]:
    from longarena.evals.runners import EVALS

    if name not in EVALS:
        raise UnknownNameError(f"unknown eval {name!r}; known evals: {', '.join(sorted(EVALS))}")
    return EVALS[name]


def summaries() -> dict[str, str]:
    from longarena.evals.runners import EVALS

    return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in sorted(EVALS.items())}
