"""LRA Pathfinder and Path-X (Linsley et al. 2018; Tay et al. 2021): are two dots connected?

Each image shows two long dashed contours and many short distractor contours on a black
background, and two round markers. In a positive image (label 1) the markers sit on the
two ends of the same contour; in a negative image (label 0) they sit on one end of each
of the two contours. Both contours are drawn in every image, so ink, contour length and
marker appearance carry no information about the label, and a negative's markers are
chosen (with the image redrawn if need be) to lie as far apart as the two ends of one
contour do, so their distance does not give the label away either (a threshold on it scores
about 55-58%, against 68% with ends picked at random): only following the path tells.

Distractors: contours of ``distractor_length`` dashes, then single-dash paddles, each
placed until the canvas has no room left. Contours are chains of ``contour_length`` dashes; each dash turns from the previous one by
an angle drawn uniformly from [-max_turn, max_turn] and keeps a clearance from every other
contour, so contours never touch or cross. Images are drawn at twice the resolution and
averaged 2×2, which anti-aliases the dashes into grey levels. Lengths scale with the
resolution, so 32×32, 64×64 and 128×128 (Path-X) show the same kind of picture.

The model sees the image flattened row by row into ``resolution²`` pixel tokens (0-255,
vocabulary 256), as in LRA. Labels are balanced exactly within every shard (to one
example for an odd shard size).

Registered names: ``pathfinder`` (any ``resolution``; default 32) and the presets
``pathfinder32``, ``pathfinder64`` and ``pathx`` (128×128).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch

from longarena.config import ConfigError
from longarena.tasks import register
from longarena.tasks.base import Task, TaskConfig

_SUPER = 2  # drawing supersampling factor


@dataclasses.dataclass
class PathfinderConfig(TaskConfig):
    n_train: int = 160_000
    n_validation: int = 20_000
    n_test: int = 20_000
    resolution: int = 32
    contour_length: int = 14
    num_distractors: int | None = None
    num_paddles: int | None = None
    distractor_length: int = 5
    max_turn: float = 0.6
    dash_fraction: float = 0.6

    def validate(self) -> None:
        super().validate()
        if not 16 <= self.resolution <= 512:
            raise ConfigError(f"resolution must be in 16..512, got {self.resolution}")
        if not 2 <= self.contour_length <= 40:
            raise ConfigError(f"contour_length must be in 2..40 dashes, got {self.contour_length}")
        if self.num_distractors is not None and not 0 <= self.num_distractors <= 200:
            raise ConfigError(
                f"num_distractors must be in 0..200 (or None for the default), got {self.num_distractors}"
            )
        if self.num_paddles is not None and not 0 <= self.num_paddles <= 1000:
            raise ConfigError(
                f"num_paddles must be in 0..1000 (or None for the default), got {self.num_paddles}"
            )
        if not 1 <= self.distractor_length <= self.contour_length:
            raise ConfigError(
                f"distractor_length must be in 1..contour_length={self.contour_length}, "
                f"got {self.distractor_length}"
            )
        # the markers (plus a gap) must fit apart on one contour's two ends
        marker = max(1.3 * self.scale, 1.8)
        shortest = math.ceil((2 * marker + 2) * 1.6 / (2 * self.scale))
        if self.contour_length < shortest:
            raise ConfigError(
                f"contour_length={self.contour_length} is too short at resolution {self.resolution}: the "
                f"markers on its two ends would touch; need contour_length >= {shortest}"
            )
        if not 0 <= self.max_turn <= math.pi / 2:
            raise ConfigError(f"max_turn must be in [0, pi/2] radians, got {self.max_turn}")
        if not 0.2 <= self.dash_fraction <= 1:
            raise ConfigError(f"dash_fraction must be in [0.2, 1], got {self.dash_fraction}")

    @property
    def scale(self) -> float:
        return self.resolution / 32

    @property
    def distractors(self) -> int:
        # ink density stays constant across resolutions: count ∝ side since length ∝ side
        return round(10 * self.scale) if self.num_distractors is None else self.num_distractors

    @property
    def paddles(self) -> int:
        return 2 * self.distractors if self.num_paddles is None else self.num_paddles


@functools.lru_cache(maxsize=64)
def _disk_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets (1, K) of the cells of a disk of ``radius`` cells."""
    r = int(math.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy**2 + dx**2 <= radius**2 + 0.25
    return dy[keep][None, :], dx[keep][None, :]


@functools.lru_cache(maxsize=64)
def _ramp(length: float, spacing: float) -> np.ndarray:
    """(P, 1) distances along a dash, at most ``spacing`` apart."""
    n = max(2, int(math.ceil(length / spacing)) + 1)
    return np.linspace(0.0, length, n)[:, None]


class _Canvas:
    """Contours grown dash by dash on a supersampled grid, with clearance bookkeeping.

    Collisions are tested on points sampled along each dash (half a clearance apart), kept
    in a spatial hash of cells as wide as the largest exclusion distance, so a candidate
    dash is checked against the few points of the 3×3 cells around it: a handful of float
    comparisons instead of rasterising its zone.
    """

    def __init__(self, c: PathfinderConfig, rng: np.random.Generator) -> None:
        self.c, self.rng = c, rng
        self.S = c.resolution * _SUPER
        s = c.scale * _SUPER  # supersampled pixels per 32-grid pixel
        self.step = 2.0 * s  # dash + gap
        self.dash = self.step * c.dash_fraction
        self.width = max(1.0, 0.5 * c.scale) * _SUPER  # line thickness in supersampled cells
        self.clearance = self.width / 2 + 0.9 * s  # two contours' centre lines stay 2× this apart
        self.margin = 1.5 * s
        self.marker_radius = max(1.3 * c.scale, 1.8) * _SUPER  # at 32×32 a smaller one is lost among dashes
        self.reach = self.marker_radius + _SUPER + self.clearance  # keep-out radius around a marker
        self.cell = 2 * self.clearance
        self.grid: dict[tuple[int, int], list[tuple[float, float, int, int]]] = {}
        self.reserved: list[tuple[float, float]] = []
        self.ink = np.zeros((self.S, self.S), dtype=np.int32)  # id of the contour drawn there
        self.next_id = 1
        self.markers: list[np.ndarray] = []
        n = max(2, int(math.ceil(self.step / (self.clearance / 2))) + 1)
        self._probe_t = [self.step * i / (n - 1) for i in range(1, n)]  # the start is the previous end

    def _disk_cells(self, points: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """Cells within ``radius`` of any of ``points`` (P, 2) as (rows, cols), clipped."""
        dy, dx = _disk_offsets(radius)
        base = np.floor(points).astype(np.int64)  # (P, 2) as (x, y)
        ys = (base[:, 1:2] + dy).ravel()
        xs = (base[:, 0:1] + dx).ravel()
        inside = (ys >= 0) & (ys < self.S) & (xs >= 0) & (xs < self.S)
        return ys[inside], xs[inside]

    def _samples(self, start: np.ndarray, angle: float, length: float, spacing: float = 0.5) -> np.ndarray:
        t = _ramp(length, spacing)
        return start + t * np.array([math.cos(angle), math.sin(angle)])

    def _clear(self, grids, x: float, y: float, cid: int, k: int) -> bool:
        """Whether a point of dash ``k`` of contour ``cid`` keeps its distance from everything.

        A contour may come close to its own last two dashes (their zones meet at the joints);
        anything further back can only be reached by turning round, so it counts.
        """
        i, j = int(x // self.cell), int(y // self.cell)
        lim = self.cell * self.cell
        for grid in grids:
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    for px, py, pc, pk in grid.get((i + di, j + dj), ()):
                        if (px - x) ** 2 + (py - y) ** 2 < lim and not (pc == cid and pk >= k - 2):
                            return False
        reach = self.reach * self.reach
        return all((mx - x) ** 2 + (my - y) ** 2 >= reach for mx, my in self.reserved)

    def _add(self, grid, x: float, y: float, cid: int, k: int) -> None:
        grid.setdefault((int(x // self.cell), int(y // self.cell)), []).append((x, y, cid, k))

    def grow(self, length: int, tries: int = 30) -> list[np.ndarray] | None:
        """A contour of ``length`` dashes placed without collisions: its dash sample points."""
        lo, hi = self.margin, self.S - self.margin
        cid = self.next_id
        uniform = self.rng.uniform
        for _ in range(tries):
            x, y = uniform(lo, hi), uniform(lo, hi)
            angle = uniform(0, 2 * math.pi)
            own: dict[tuple[int, int], list] = {}
            grids = (self.grid, own)
            if not self._clear(grids, x, y, cid, 0):
                continue
            self._add(own, x, y, cid, 0)
            dashes: list[np.ndarray] = []
            for k in range(length):
                for _attempt in range(12):
                    a = angle + (uniform(-self.c.max_turn, self.c.max_turn) if k else 0.0)
                    ca, sa = math.cos(a), math.sin(a)
                    ex, ey = x + self.step * ca, y + self.step * sa
                    if not (lo <= ex <= hi and lo <= ey <= hi):
                        if k == 0:
                            angle = uniform(0, 2 * math.pi)
                        continue
                    if all(self._clear(grids, x + t * ca, y + t * sa, cid, k) for t in self._probe_t):
                        break
                else:
                    break
                for t in self._probe_t:
                    self._add(own, x + t * ca, y + t * sa, cid, k)
                dashes.append(self._samples(np.array([x, y]), a, self.dash))
                x, y, angle = ex, ey, a
            if len(dashes) == length:
                for key, pts in own.items():
                    self.grid.setdefault(key, []).extend(pts)
                self.next_id += 1
                ys, xs = self._disk_cells(np.concatenate(dashes), self.width / 2)
                self.ink[ys, xs] = cid
                return dashes
        return None

    def marker_fits(self, point: np.ndarray, cid: int) -> bool:
        """Whether a marker on contour ``cid`` at ``point`` stays a visible gap away from other ink."""
        ys, xs = self._disk_cells(point[None, :], self.marker_radius + _SUPER)
        found = self.ink[ys, xs]
        return bool(((found == 0) | (found == cid)).all())

    def reserve(self, point: np.ndarray, cid: int) -> None:
        """Keep later contours a visible gap away from a marker's disk."""
        self.reserved.append((float(point[0]), float(point[1])))

    def marker(self, point: np.ndarray, cid: int) -> None:
        self.markers.append(point)
        ys, xs = self._disk_cells(point[None, :], self.marker_radius)
        self.ink[ys, xs] = cid

    def image(self) -> np.ndarray:
        """(R, R) uint8: the supersampled ink averaged over 2×2 blocks."""
        R = self.c.resolution
        pooled = (self.ink != 0).reshape(R, _SUPER, R, _SUPER).mean(axis=(1, 3))
        return np.round(pooled * 255).astype(np.uint8)


def _scatter(canvas: _Canvas, count: int, length: int) -> None:
    """Up to ``count`` contours of ``length`` dashes, until the canvas is full."""
    misses = 0
    for _ in range(count):
        # a full canvas rejects every new contour; stop instead of burning time on it
        misses = 0 if canvas.grow(length, tries=6) is not None else misses + 1
        if misses == 4:
            break


def endpoints(dashes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return dashes[0][0], dashes[-1][-1]


def draw(c: PathfinderConfig, label: int, rng: np.random.Generator) -> np.ndarray:
    """One (R, R) uint8 image with the given label (1: markers on the same contour)."""
    return draw_canvas(c, label, rng).image()


def draw_canvas(c: PathfinderConfig, label: int, rng: np.random.Generator) -> _Canvas:
    """The supersampled canvas of one image; ``canvas.markers`` holds the marker centres."""
    for _ in range(200):
        canvas = _Canvas(c, rng)
        a = canvas.grow(c.contour_length)  # contour id 1
        b = canvas.grow(c.contour_length)  # contour id 2
        if a is None or b is None:
            continue
        a0, a1 = endpoints(a)
        b0, b1 = endpoints(b)
        if label:
            pair, ids = ((a0, a1), (1, 1)) if rng.random() < 0.5 else ((b0, b1), (2, 2))
        else:
            # markers as far apart as a positive's would be (the end-to-end distance of one of
            # the contours), so their distance does not give the label away
            target = np.linalg.norm(a0 - a1) if rng.random() < 0.5 else np.linalg.norm(b0 - b1)
            combos = [(p, q) for p in (a0, a1) for q in (b0, b1)]
            pair = min(combos, key=lambda pq: abs(np.linalg.norm(pq[0] - pq[1]) - target))
            if abs(np.linalg.norm(pair[0] - pair[1]) - target) > 0.1 * target + _SUPER:
                continue
            ids = (1, 2)
        # a marker touching the other contour (or the other marker) would join the two paths
        apart = np.linalg.norm(pair[0] - pair[1]) > 2 * canvas.marker_radius + 2 * _SUPER
        if not (apart and all(canvas.marker_fits(p, i) for p, i in zip(pair, ids))):
            continue
        for p, i in zip(pair, ids):
            canvas.reserve(p, i)
        _scatter(canvas, c.distractors, c.distractor_length)
        # single dashes fill what room the distractor contours leave, as in the benchmark's clutter
        _scatter(canvas, c.paddles, 1)
        for p, i in zip(pair, ids):
            canvas.marker(p, i)
        return canvas
    raise RuntimeError(
        f"could not place two contours of {c.contour_length} dashes on a {c.resolution}×{c.resolution} "
        "image; lower contour_length or max_turn"
    )


@register("pathfinder")
class Pathfinder(Task):
    """LRA Pathfinder: are the two markers on the same contour? Pixels flattened to a sequence."""

    config_class = PathfinderConfig
    kind = "classification"
    version = 3  # 2: negatives' markers matched to positives' distances; 3: single-dash paddles
    shard_size = 1000
    parallel = True
    cache_by_default = True

    @property
    def vocab_size(self) -> int:
        return 256

    @property
    def num_classes(self) -> int:
        return 2

    @property
    def seq_len(self) -> int:
        return self.config.resolution**2

    def generate(self, split, n, generator):
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        labels = rng.permutation(np.arange(n) % 2)
        examples = []
        for label in labels:
            img = draw(self.config, int(label), rng)
            examples.append(
                {
                    "input_ids": torch.from_numpy(img.reshape(-1).astype(np.int64)),
                    "label": torch.tensor(int(label)),
                }
            )
        return examples

    def image(self, example) -> np.ndarray:
        """An example's pixels as an (R, R) uint8 array."""
        R = self.config.resolution
        return example["input_ids"].numpy().astype(np.uint8).reshape(R, R)


def _preset(name: str, resolution: int, doc: str) -> type[Pathfinder]:
    cfg = dataclasses.make_dataclass(
        f"Pathfinder{resolution}Config",
        [("resolution", int, dataclasses.field(default=resolution))],
        bases=(PathfinderConfig,),
    )
    cfg.__module__ = __name__
    globals()[cfg.__name__] = cfg  # picklable by name for worker processes
    cls = type(f"Pathfinder{resolution}Preset_{name}", (Pathfinder,), {"config_class": cfg, "__doc__": doc})
    cls.__module__ = __name__
    globals()[cls.__name__] = cls
    return register(name)(cls)


_preset("pathfinder32", 32, "LRA Pathfinder at 32×32 (1024 pixel tokens).")
_preset("pathfinder64", 64, "LRA Pathfinder at 64×64 (4096 pixel tokens).")
_preset("pathx", 128, "LRA Path-X: Pathfinder at 128×128 (16384 pixel tokens).")
