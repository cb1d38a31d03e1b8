"""Pathfinder: labels are right (markers on one contour or two), balanced, seeded; the
image holds two long contours and distractors; presets and bad configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longarena import tasks
from longarena.config import ConfigError
from longarena.tasks import pathfinder
from longarena.tasks.pathfinder import PathfinderConfig


def _label_components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of a boolean mask by flood fill (independent of the generator)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    current = 0
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x]:
            continue
        current += 1
        stack = [(y, x)]
        labels[y, x] = current
        while stack:
            cy, cx = stack.pop()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if (
                    0 <= ny < mask.shape[0]
                    and 0 <= nx < mask.shape[1]
                    and mask[ny, nx]
                    and not labels[ny, nx]
                ):
                    labels[ny, nx] = current
                    stack.append((ny, nx))
    return labels


def test_markers_lie_on_one_contour_exactly_when_the_label_is_one():
    """Draw contours solid (no gaps) and flood-fill the supersampled ink: the two markers
    are in one component for positives and in two for negatives."""
    c = PathfinderConfig(resolution=32, dash_fraction=1.0)
    rng = np.random.default_rng(0)
    for label in (0, 1) * 8:
        canvas = pathfinder.draw_canvas(c, label, rng)
        comp = _label_components(canvas.ink)
        assert len(canvas.markers) == 2
        ids = {int(comp[int(p[1]), int(p[0])]) for p in canvas.markers}
        assert 0 not in ids
        assert len(ids) == (1 if label else 2)
        # every contour (2 marked + the distractors placed) is a separate piece
        assert comp.max() == canvas.next_id - 1 >= 2


def test_labels_balanced_and_seeded(monkeypatch, tmp_path):
    monkeypatch.setenv("LONGARENA_CACHE", str(tmp_path))
    cfg = dict(n_train=40, n_validation=0, n_test=0, num_distractors=2)
    task = tasks.get("pathfinder32", **cfg)
    ds = task.split("train")
    labels = torch.stack([ex["label"] for ex in ds])
    assert labels.sum() == 20
    same = tasks.get("pathfinder32", **cfg)
    same.use_cache = False
    ds2 = same.split("train")
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(ds, ds2))
    other = tasks.get("pathfinder32", **cfg, seed=1)
    other.use_cache = False
    assert not torch.equal(other.split("train")[0]["input_ids"], ds[0]["input_ids"])


def test_same_seed_gives_byte_identical_cache_files(monkeypatch, tmp_path):
    cfg = dict(n_train=6, n_validation=0, n_test=0, num_distractors=1)
    monkeypatch.setenv("LONGARENA_CACHE", str(tmp_path / "a"))
    a = tasks.get("pathfinder32", **cfg)
    a.split("train")
    pa = a.cache_path("train")
    monkeypatch.setenv("LONGARENA_CACHE", str(tmp_path / "b"))
    b = tasks.get("pathfinder32", **cfg)
    b.split("train")
    pb = b.cache_path("train")
    assert pa != pb and pa.read_bytes() == pb.read_bytes()


def test_image_content_sequence_form_and_presets():
    task = tasks.get("pathx", n_train=2, num_distractors=4)
    task.use_cache = False
    assert task.seq_len == 128 * 128 and task.vocab_size == 256 and task.num_classes == 2
    ex = task.split("train")[0]
    assert ex["input_ids"].shape == (128 * 128,) and ex["input_ids"].dtype == torch.int64
    img = task.image(ex)
    ink = img > 0
    # two long contours of 14 dashes + 4 distractors + 2 markers: many separate pieces, a sparse image
    assert 0.02 < ink.mean() < 0.3
    assert _label_components(ink).max() > 20
    assert set(np.unique(img)) - {0, 255}  # anti-aliased grey levels
    assert tasks.get("pathfinder64").seq_len == 4096
    assert tasks.get("pathfinder", resolution=48).seq_len == 48 * 48


@pytest.mark.parametrize(
    "config, match",
    [
        (dict(resolution=8), "resolution must be in 16..512"),
        (dict(contour_length=50), "contour_length"),
        (dict(distractor_length=20), "distractor_length must be in 1..contour_length=14"),
        (dict(max_turn=3.0), "max_turn"),
        (dict(resolution=16, contour_length=4, distractor_length=2), "need contour_length >= 9"),
    ],
)
def test_bad_configs(config, match):
    with pytest.raises(ConfigError, match=match):
        tasks.get("pathfinder", **config)


def test_marker_distance_does_not_give_the_label_away():
    """Negatives put their markers as far apart as positives do: the best threshold on the
    marker distance is close to chance (it was 68% before negatives were matched)."""
    c = PathfinderConfig(resolution=32, num_distractors=0)
    rng = np.random.default_rng(1)
    dist, labels = [], []
    for i in range(160):
        canvas = pathfinder.draw_canvas(c, i % 2, rng)
        a, b = canvas.markers
        dist.append(float(np.linalg.norm(a - b)))
        labels.append(i % 2)
    x, y = np.array(dist), np.array(labels)
    best = max(max(((x < t) == y).mean(), ((x >= t) == y).mean()) for t in np.unique(x))
    assert best < 0.65
