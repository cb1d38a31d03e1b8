"""Matplotlib helpers shared by the bench and the arena's studies (figures are drawn and
written through :mod:`longarena.plotting`: Agg backend, atomic PNG writes)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from longarena.plotting import pyplot, save_png  # noqa: F401  (re-exported for the bench and studies)


def plain_log_ticks(axis) -> None:
    """Ticks at 1, 2, 5 x 10^k labelled as plain numbers (1000, not 10^3); minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _finite(points: Sequence[tuple[float, float | None]]) -> list[tuple[float, float]]:
    return [(x, y) for x, y in points if y is not None and math.isfinite(y) and y > 0]


def loglog_panels(
    panels: Mapping[str, Mapping[str, Sequence[tuple[float, float | None]]]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    dashed: Sequence[str] = (),
    marks: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> Path:
    """One log-log panel per key of ``panels`` (e.g. per bench mode), one line per series.

    ``panels[panel][series]`` is a list of (x, y) points; missing or non-positive y values
    (errors, out-of-memory) are left out of the line. ``dashed`` series (peers) are drawn
    dashed; ``marks[panel][series]`` lists x values drawn as a cross at the top of the
    panel (where a series ran out of memory).
    """
    plt = pyplot()
    from matplotlib.ticker import NullFormatter

    names = list(panels)
    legend_in = 1.9
    width = 4.2 * max(1, len(names)) + legend_in
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(width, 3.8), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    all_series = sorted({s for p in panels.values() for s in p}, key=lambda s: (s in dashed, s))
    colour_of = {s: colours[i % len(colours)] for i, s in enumerate(all_series)}
    for ax, panel in zip(axes[0], names):
        drawn = False
        for series, points in panels[panel].items():
            pts = _finite(points)
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "--" if series in dashed else "-", marker="o", ms=3, color=colour_of[series], label=series)
            drawn = True
        for series, xs in ((marks or {}).get(panel) or {}).items():
            for x in xs:
                ax.plot([x], [1.0], "x", color=colour_of.get(series, "black"), ms=8, transform=ax.get_xaxis_transform(),
                        clip_on=False)
        if drawn:
            xs = sorted({x for pts in panels[panel].values() for x, _ in _finite(pts)})
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(xs, [f"{x:g}" for x in xs], rotation=45 if len(xs) > 4 else 0)
            ax.xaxis.set_minor_formatter(NullFormatter())
            plain_log_ticks(ax.yaxis)
        else:
            ax.text(0.5, 0.5, "no measurements", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.25)
    axes[0][0].set_ylabel(ylabel)
    handles = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center right", fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - legend_in / width, 1))
    return save_png(fig, path)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; cells are written with ``str``."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
