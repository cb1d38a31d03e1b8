"""Matplotlib on headless machines: the Agg backend and atomic PNG writes.

Every figure the library writes (evals, task samples, bench, arena studies and report) goes
through :func:`save_png`, so a folder never holds a half-written image, even when a run is
killed while saving.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from longarena.atomic import temporary_name


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike, *, dpi: int = 120, **savefig_kwargs: Any) -> Path:
    """Write ``fig`` to ``path`` through a temporary file and a rename, then close it.

    ``fig`` may come from pyplot or be a bare ``matplotlib.figure.Figure`` (which pyplot does
    not track, so closing it is a no-op and pyplot is not imported for it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        fig.savefig(tmp, dpi=dpi, format="png", **savefig_kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.close(fig)
    return path
