"""Every generated task honours the contract the training loop relies on."""

from __future__ import annotations

import pytest
import torch

from longarena import tasks
from longarena.tasks.base import IGNORE, KINDS

SMALL = {
    "associative_recall": {},
    "mqar": dict(vocab_size=64, num_pairs=4, length=32),
    "selective_copying": dict(length=24, num_tokens=4),
    "induction_heads": dict(length=16, test_length=32),
    "copying": dict(num_tokens=4, delay=2),
    "majority": {},
    "listops": dict(min_length=20, max_length=80),
    "pathfinder": dict(resolution=16, contour_length=10, distractor_length=2, num_distractors=2),
    "pathfinder32": dict(num_distractors=1),
}
FILE_TASKS = {"lra_text", "lra_retrieval", "lra_image"}
BIG = {"pathfinder64", "pathx"}  # same code as pathfinder32 at a larger size


def test_every_registered_task_is_covered():
    assert set(tasks.names()) == set(SMALL) | FILE_TASKS | BIG


@pytest.mark.parametrize("name", sorted(SMALL))
def test_batches_fit_vocab_classes_and_seq_len(name, monkeypatch):
    monkeypatch.setenv("LONGARENA_CACHE", "off")
    task = tasks.get(name, **SMALL[name], n_train=6, n_validation=2, n_test=3)
    assert task.kind in KINDS
    for split in ("train", "test"):
        batch = next(iter(task.loader(split, 3)))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert ids.dtype == torch.int64 and ids.shape[0] == 3 and ids.shape[1] <= task.seq_len
        assert 0 <= int(ids.min()) and int(ids.max()) < task.vocab_size
        assert mask.dtype == torch.bool and mask.shape == ids.shape
        if task.kind == "lm":
            labels = batch["labels"]
            assert labels.shape == ids.shape
            scored = labels[labels != IGNORE]
            assert scored.numel() > 0 and int(scored.min()) >= 0 and int(scored.max()) < task.vocab_size
            assert (labels[~mask] == IGNORE).all()
        else:
            label = batch["label"]
            assert label.shape == (3,) and 0 <= int(label.min()) and int(label.max()) < task.num_classes
