"""What ``longarena data list | show | make`` does, as plain functions the CLI wraps.

- ``list_tasks()`` -> rows of (name, kind, summary) for ``data list``.
- ``show(name, out_dir, n=8, split="train", **config)`` -> the files written: a small,
  freshly generated split of ``n`` examples, described in ``summary.json`` (lengths,
  labels, and ListOps operator frequencies and depth), decoded in ``examples.txt``, and,
  for image tasks (Pathfinder, Path-X, LRA Image), one PNG per example plus ``grid.png``.
- ``make(name, splits=("train", "validation", "test"), workers=None, progress=True,
  **config)`` -> per split: size, cache file, whether it was already cached, seconds,
  examples/s. Builds every split
  with the task's full config (all cores for generators) and leaves it in the cache.
- ``describe(dataset, task)`` -> the statistics ``show`` writes, for any split.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from longarena import tasks
from longarena.constants import IGNORE
from longarena.tasks.base import SPLITS, Task


def list_tasks() -> list[tuple[str, str, str]]:
    """(name, kind, one-line summary) of every registered task."""
    summaries = tasks.summaries()
    return [(name, tasks.REGISTRY.factory(name).kind, summaries[name]) for name in tasks.names()]


def _is_image(task: Task) -> bool:
    from longarena.tasks.lra_files import LRAImage
    from longarena.tasks.pathfinder import Pathfinder

    return isinstance(task, Pathfinder) or (isinstance(task, LRAImage) and task.config.grayscale)


def describe(dataset, task: Task) -> dict[str, Any]:
    """Size, sequence lengths, label counts (and ListOps operator statistics) of a split."""
    from longarena.tasks import listops

    if isinstance(task, listops.ListOps):
        return {"task": task.registry_name, **listops.stats(dataset)}
    lengths = dataset.lengths().tolist() if len(dataset) else []
    out: dict[str, Any] = {
        "task": task.registry_name,
        "kind": task.kind,
        "n": len(dataset),
        "length_min": min(lengths, default=0),
        "length_mean": sum(lengths) / max(len(lengths), 1),
        "length_max": max(lengths, default=0),
        "vocab_size": task.vocab_size,
    }
    if task.kind == "lm":
        scored = [int((ex["labels"] != IGNORE).sum()) for ex in dataset]
        out["scored_tokens_mean"] = sum(scored) / max(len(scored), 1)
    else:
        counts = Counter(int(ex["label"]) for ex in dataset)
        out["label_counts"] = {str(k): counts[k] for k in sorted(counts)}
    return out


def _decode(task: Task, ex: dict) -> str:
    from longarena.tasks import listops

    if isinstance(task, listops.ListOps):
        return f"label={int(ex['label'])}\t{listops.to_string(ex['input_ids'])}"
    ids = ex["input_ids"].tolist()
    head = " ".join(map(str, ids[:200])) + (" …" if len(ids) > 200 else "")
    if "labels" in ex:
        scored = [(i, int(v)) for i, v in enumerate(ex["labels"].tolist()) if v != IGNORE]
        return f"scored(position, target)={scored[:20]}\t{head}"
    return f"label={int(ex['label'])}\t{head}"


def show(name: str, out_dir: str | Path, n: int = 8, split: str = "train", **config: Any) -> list[Path]:
    """Write a look at task ``name`` to ``out_dir``: summary, decoded examples, PNGs for images."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    cls = tasks.REGISTRY.factory(name)
    if "data_dir" not in config:  # generators: a small split of n examples, not the full one
        config = {f"n_{split}": n, **config}
    task = tasks.get(name, **config)
    task.use_cache = False
    ds = task.split(split)
    examples = [ds[i] for i in range(min(n, len(ds)))]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    summary = {"config": task.config.to_dict(), "split": split, **describe(ds, task)}
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    written.append(path)
    path = out / "examples.txt"
    path.write_text("".join(_decode(task, ex) + "\n" for ex in examples))
    written.append(path)
    if _is_image(task):
        written += _write_images(task, examples, out, cls.__name__)
    return written


def _write_images(task: Task, examples: list[dict], out: Path, title: str) -> list[Path]:
    from longarena.plotting import pyplot, save_png

    plt = pyplot()
    side = int(round(task.seq_len**0.5))
    written = []
    images = [ex["input_ids"].numpy().astype(np.uint8).reshape(side, side) for ex in examples]
    for i, (img, ex) in enumerate(zip(images, examples)):
        path = out / f"{task.registry_name}_{i:03d}_label{int(ex['label'])}.png"
        plt.imsave(path, img, cmap="gray", vmin=0, vmax=255)
        written.append(path)
    cols = min(4, len(images))
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, ex in zip(axes.flat, images, examples):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"label {int(ex['label'])}")
    fig.suptitle(f"{task.registry_name} ({side}×{side})")
    fig.tight_layout()
    written.append(save_png(fig, out / "grid.png", dpi=100))
    return written


def make(
    name: str,
    splits: tuple[str, ...] = SPLITS,
    workers: int | None = None,
    progress: bool = True,
    **config: Any,
) -> dict[str, dict[str, Any]]:
    """Build (and cache) the splits of ``name``; returns per split its size, file and speed."""
    task = tasks.get(name, **config)
    report = {}
    for split in splits:
        path = task.cache_path(split)
        cached = path is not None and path.exists()
        start = time.perf_counter()
        ds = task.split(split, progress=progress, workers=workers)
        seconds = time.perf_counter() - start
        report[split] = {
            "n": len(ds),
            "cache_file": str(path) if path is not None else None,
            "from_cache": cached,
            "seconds": round(seconds, 3),
            "examples_per_s": round(len(ds) / seconds, 1) if seconds > 0 else None,
        }
    return report


# kept under the name the brief used for it
generate = make
