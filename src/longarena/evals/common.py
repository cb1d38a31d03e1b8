"""Pieces shared by the runners: the too-long policy, progress callbacks, JSON and figure output."""

from __future__ import annotations

import gzip
import json
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longarena.atomic import write_text
from longarena.evals.adapter import Adapter, EvalError

#: progress(done, total, message) -- the CLI passes a rich progress bar's update here
Progress = Callable[[int, int, str], None] | None

POLICIES = ("mark", "refuse")


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise EvalError(f"on_too_long must be one of {POLICIES}, got {policy!r}")


def beyond_context(adapter: Adapter, n_tokens: int, policy: str, what: str) -> bool:
    """Whether ``n_tokens`` exceed the trained context; warns ('mark') or raises ('refuse')."""
    if not adapter.check_length(n_tokens):
        return False
    message = (
        f"{what}: {n_tokens} tokens exceed {adapter.name}'s trained context of {adapter.max_length}; "
        "the result is marked beyond_context"
    )
    if policy == "refuse":
        raise EvalError(
            message.replace("the result is marked beyond_context", "refusing (on_too_long='refuse')")
        )
    warnings.warn(message, stacklevel=3)
    return True


def tick(progress: Progress, done: int, total: int, message: str = "") -> None:
    if progress is not None:
        progress(done, total, message)


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, tuples lists, Paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(data: dict[str, Any], path: str | os.PathLike) -> Path:
    return write_text(path, json.dumps(clean(data), indent=2, ensure_ascii=False))


def require_file(path: str | os.PathLike, what: str, hint: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise EvalError(f"{what} not found at {path}; {hint}")
    return path


def read_jsonl(path: Path, required: tuple[str, ...], limit: int | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file (``.gz`` read through gzip), blank lines skipped.

    A line that is not JSON, or lacks one of the ``required`` fields, raises ``EvalError``
    naming the file and line; at most ``limit`` rows are read.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    rows: list[dict[str, Any]] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalError(f"{path}:{line_no}: not JSON ({exc.msg})") from exc
            missing = [k for k in required if k not in row]
            if missing:
                raise EvalError(f"{path}:{line_no}: missing field(s) {missing}; expected {', '.join(required)}")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def answer_budget(adapter: Adapter, answers: list[str], requested: int | None) -> int:
    """Tokens to generate: ``requested``, or (None) room for all answers plus 8 tokens of slack.

    Tokenizers differ a lot on digits and UUIDs (SmolLM2 spends one token per digit and ~25
    on a UUID), so a fixed budget would cut correct answers short.
    """
    if requested is not None:
        return requested
    return len(adapter.encode(" " + ", ".join(answers), special=False)) + 8
