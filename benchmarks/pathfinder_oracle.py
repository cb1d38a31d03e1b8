"""Pathfinder as rendered: how well does pure connectivity of the image predict the label?

A reader that thresholds the image and flood-fills (8-connected) from one marker answers
"connected" when the fill reaches the other marker. On positives the markers sit on one
contour; on negatives they sit on two contours that may still touch in the rendered
image (dashes, distractors and clutter share pixels at low resolution). The agreement is a
ceiling for models that read connectivity, and a check that the labels are learnable.

    python benchmarks/pathfinder_oracle.py --resolution 32 --n 400
"""

from __future__ import annotations

import argparse
import json
from collections import deque
from pathlib import Path

import numpy as np

from longarena.tasks.pathfinder import _SUPER, PathfinderConfig, draw_canvas


def _fill(img: np.ndarray, start: tuple[int, int], threshold: int) -> np.ndarray:
    """Pixels above ``threshold`` 8-connected to ``start``: (R, R) bool."""
    size = img.shape[0]
    seen = np.zeros(img.shape, dtype=bool)
    seen[start] = True
    queue = deque([start])
    while queue:
        y, x = queue.popleft()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                v, u = y + dy, x + dx
                if 0 <= v < size and 0 <= u < size and not seen[v, u] and img[v, u] > threshold:
                    seen[v, u] = True
                    queue.append((v, u))
    return seen


def _pixel(point: np.ndarray) -> tuple[int, int]:
    """A marker centre (x, y on the supersampled canvas) as an image (row, col)."""
    x, y = (point / _SUPER).astype(int)
    return int(y), int(x)


def agreement(resolution: int, n: int, threshold: int, seed: int = 0) -> dict[str, float]:
    config = PathfinderConfig(resolution=resolution)
    rng = np.random.default_rng(seed)
    hits = {0: 0, 1: 0}
    for i in range(n):
        label = i % 2
        canvas = draw_canvas(config, label, rng)
        img = canvas.image()
        a, b = (_pixel(m) for m in canvas.markers[:2])
        connected = bool(_fill(img, a, threshold)[b])
        hits[label] += int(connected == bool(label))
    per = n // 2
    return {"positives": hits[1] / (n - per), "negatives": hits[0] / per, "accuracy": (hits[0] + hits[1]) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--thresholds", type=int, nargs="+", default=[0, 64, 127])
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "pathfinder_oracle.json")
    args = parser.parse_args()
    rows = []
    print(f"Pathfinder-{args.resolution}, {args.n} images: flood fill from one marker reaches the other iff label 1")
    print(f"{'threshold':>9} | {'positives':>9} | {'negatives':>9} | {'accuracy':>8}")
    for threshold in args.thresholds:
        r = {"threshold": threshold, **agreement(args.resolution, args.n, threshold)}
        rows.append(r)
        print(f"{threshold:>9} | {r['positives']:>9.3f} | {r['negatives']:>9.3f} | {r['accuracy']:>8.3f}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps({"resolution": args.resolution, "n": args.n, "rows": rows}, indent=2))
    tmp.replace(args.json)


if __name__ == "__main__":
    main()
