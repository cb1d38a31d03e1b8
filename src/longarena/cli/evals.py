"""What only the command adds to the eval runners of :mod:`longarena.evals.runners`: a
default run folder and a rich progress bar."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Callable, Iterator
from pathlib import Path


def new_run_dir(name: str, base: str | os.PathLike = "runs") -> Path:
    """``<base>/eval-<name>-<UTC timestamp>``, created."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    path = Path(base) / f"eval-{name}-{stamp}"
    path.mkdir(parents=True, exist_ok=False)
    return path


@contextlib.contextmanager
def rich_progress(description: str = "eval") -> Iterator[Callable[[int, int, str], None]]:
    """A ``progress(done, total, message)`` callback drawing a rich progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int, message: str) -> None:
            bar.update(
                task,
                completed=done,
                total=total,
                description=f"{description}: {message}" if message else description,
            )

        yield update
