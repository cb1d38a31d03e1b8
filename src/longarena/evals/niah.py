"""Needle in a haystack and pass-key retrieval over a grid of context lengths x depths.

Each cell builds a probe with ``longarena.tasks.probes`` (passkey, needle, or RULER's
multikey / multivalue variants) fitted to the cell's length in the model's own tokens,
decodes a greedy answer and scores it by string match (no LLM judge): ``substring``
(the fraction of expected answers found, whole tokens, after normalisation) or ``exact``
(the first line of the output equals the answer after normalisation).

The heatmap follows the field's convention: depth on y (0 % = start of the context at the
top), length on x, a fixed 0-1 colour range so figures compare, and a dashed line where the
model's trained context ends.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

from longarena.config import Config, ConfigError
from longarena.evals import metrics
from longarena.evals.adapter import Adapter
from longarena.evals.common import (
    Progress,
    answer_budget,
    beyond_context,
    check_policy,
    tick,
    write_json,
)
from longarena.plotting import pyplot, save_png
from longarena.tasks import probes

KINDS = ("needle", "passkey", "multikey", "multivalue")


@dataclasses.dataclass
class GridConfig(Config):
    kind: str = "needle"
    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    #: probes per cell (different seeds); the cell's score is their mean
    samples: int = 1
    seed: int = 0
    #: None: room for the expected answer(s) in the model's tokens plus 8
    max_new_tokens: int | None = None
    match: str = "substring"
    #: what to do with a length beyond the model's trained context: "mark" (warn) or "refuse"
    on_too_long: str = "mark"
    #: haystack filler for needle/multikey/multivalue: "prose" or "repeat"
    filler: str = "prose"

    def validate(self) -> None:
        self.lengths, self.depths = tuple(self.lengths), tuple(self.depths)
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not self.lengths or any(not isinstance(n, int) or n <= 0 for n in self.lengths):
            raise ConfigError(f"lengths must be positive token counts, got {self.lengths}")
        if not self.depths or any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise ConfigError(f"depths must be fractions in [0, 1], got {self.depths}")
        if self.samples < 1 or (self.max_new_tokens is not None and self.max_new_tokens < 1):
            raise ConfigError(
                f"samples and max_new_tokens must be >= 1, got {self.samples}, {self.max_new_tokens}"
            )
        if self.match not in ("substring", "exact"):
            raise ConfigError(f"match must be 'substring' or 'exact', got {self.match!r}")
        check_policy(self.on_too_long)


def match_score(output: str, answers: list[str], how: str) -> float:
    """Fraction of ``answers`` matched by ``output``."""
    if how == "exact":
        first = output.strip().split("\n")[0]
        return sum(metrics.exact_match(first, a) for a in answers) / len(answers)
    return sum(metrics.substring_match(output, a) for a in answers) / len(answers)


def make_probe(config: GridConfig, length: int, depth: float, seed: int, adapter: Adapter) -> probes.Probe:
    def count(text: str) -> int:
        return len(adapter.encode(text, special=False))

    if config.kind == "passkey":
        return probes.make_passkey(length, depth, seed, count)
    return getattr(probes, f"make_{config.kind}")(
        length, depth, seed=seed, tokenizer=count, filler=config.filler
    )


@dataclasses.dataclass
class GridResult:
    config: GridConfig
    model: dict[str, Any]
    cells: list[dict[str, Any]]

    def matrix(self) -> list[list[float]]:
        """Mean score, rows = depths, columns = lengths (the heatmap's layout)."""
        out = []
        for d in self.config.depths:
            row = []
            for n in self.config.lengths:
                scores = [c["score"] for c in self.cells if c["length"] == n and c["depth"] == d]
                row.append(sum(scores) / len(scores) if scores else float("nan"))
            out.append(row)
        return out

    def by_length(self) -> dict[int, float]:
        m = self.matrix()
        return {n: sum(row[j] for row in m) / len(m) for j, n in enumerate(self.config.lengths)}

    def mean(self) -> float:
        return sum(c["score"] for c in self.cells) / len(self.cells)

    def to_dict(self) -> dict[str, Any]:
        return {
            "eval": self.config.kind,
            "config": self.config.to_dict(),
            "model": self.model,
            "mean": self.mean(),
            "by_length": self.by_length(),
            "matrix": {
                "depths": list(self.config.depths),
                "lengths": list(self.config.lengths),
                "scores": self.matrix(),
            },
            "cells": self.cells,
        }

    def save(self, folder: str | os.PathLike, name: str | None = None) -> dict[str, Path]:
        folder = Path(folder)
        name = name or self.config.kind
        return {
            "json": write_json(self.to_dict(), folder / f"{name}.json"),
            "png": plot_heatmap(self, folder / f"{name}.png"),
        }


def run_grid(
    adapter: Adapter, config: GridConfig | None = None, progress: Progress = None, **overrides: Any
) -> GridResult:
    """Greedy answers for every (length, depth, sample) cell of the grid."""
    if config is None:
        config = GridConfig(**overrides)
    elif overrides:
        config = GridConfig.from_dict({**config.to_dict(), **overrides})
    cells = []
    total = len(config.lengths) * len(config.depths) * config.samples
    tick(progress, 0, total, f"{config.kind} grid")
    for i, length in enumerate(config.lengths):
        for j, depth in enumerate(config.depths):
            for s in range(config.samples):
                seed = config.seed * 1_000_003 + i * 10_007 + j * 101 + s
                probe = make_probe(config, length, depth, seed, adapter)
                ids = adapter.encode(probe.prompt)
                budget = answer_budget(adapter, probe.answers, config.max_new_tokens)
                beyond = beyond_context(
                    adapter,
                    len(ids) + budget,
                    config.on_too_long,
                    f"{config.kind} cell {length}",
                )
                start = time.perf_counter()
                output = adapter.decode(adapter.generate_ids(ids, budget))
                cells.append(
                    {
                        "length": length,
                        "depth": depth,
                        "sample": s,
                        "tokens": len(ids),
                        "depth_reached": probe.depth,
                        "answers": probe.answers,
                        "output": output,
                        "score": match_score(output, probe.answers, config.match),
                        "beyond_context": beyond,
                        "seconds": time.perf_counter() - start,
                    }
                )
                tick(
                    progress,
                    len(cells),
                    total,
                    f"{length} tokens, depth {depth:.0%}: {cells[-1]['score']:.2f}",
                )
    return GridResult(config, adapter.describe(), cells)


def run_passkey(adapter: Adapter, progress: Progress = None, **overrides: Any) -> GridResult:
    return run_grid(adapter, GridConfig(**{"kind": "passkey", **overrides}), progress)


def _fmt_len(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def plot_heatmap(result: GridResult, path: str | os.PathLike, trained_length: int | None = None) -> Path:
    """Depth (y) x length (x) heatmap of the mean score, colours fixed to 0-1, written to ``path``."""
    return save_png(heatmap_figure(result, trained_length), path)


def heatmap_figure(result: GridResult, trained_length: int | None = None):
    """The heatmap as a matplotlib figure; ``trained_length`` defaults to the model's max_length."""
    plt = pyplot()
    from matplotlib.colors import LinearSegmentedColormap

    lengths, depths = result.config.lengths, result.config.depths
    m = result.matrix()
    trained = trained_length if trained_length is not None else result.model.get("max_length")
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.55 * len(depths)))
    cmap = LinearSegmentedColormap.from_list("niah", ["#d7301f", "#fdae61", "#1a9850"])
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto")
    for r, row in enumerate(m):
        for c, v in enumerate(row):
            if not math.isnan(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [_fmt_len(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    title = f"{result.config.kind}: {result.model.get('name', '')} (mean {result.mean():.2f})"
    if trained:
        inside = sum(n <= trained for n in lengths)
        # the line separates the columns within the trained context from those beyond it; a grid
        # that stops short of the trained length has no such boundary, so the title says it
        if inside and (inside < len(lengths) or lengths[-1] == trained):
            ax.axvline(
                inside - 0.5, color="black", linestyle="--", linewidth=1.5, label=f"trained length {trained}"
            )
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False, fontsize=8)
        elif not inside:
            ax.axvline(-0.5, color="black", linestyle="--", linewidth=1.5, label=f"trained length {trained}")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False, fontsize=8)
        else:
            title += f"\nall lengths within the trained {trained}"
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="score")
    fig.tight_layout()
    return fig
