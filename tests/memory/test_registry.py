"""The four memory models are registered, round-trip through configs and checkpoints."""

from __future__ import annotations

import pytest
import torch

import longarena.memory  # noqa: F401  (registers the memory models)
from longarena import models
from longarena.memory.probes import FactRecallConfig, fact_recall
from longarena.memory.runner import run_segments
from longarena.models import checkpoint
from longarena.tasks.base import IGNORE

NAMES = ["transformer_xl", "compressive", "rmt", "memformer"]


def test_names_are_registered():
    assert set(NAMES) <= set(models.names())


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = models.get(name, vocab_size=20, d_model=16, n_layers=1, n_heads=2, segment_len=4).eval()
    assert type(model.config).from_dict(model.config.to_dict()) == model.config
    loaded = checkpoint.load(checkpoint.save(model, tmp_path / name), expect=name).eval()
    ids = torch.randint(0, 20, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(run_segments(loaded, ids).logits, run_segments(model, ids).logits)


def test_fact_recall_probe():
    config = FactRecallConfig(n_segments=4, segment_len=5, n_facts=3, n_filler=6)
    ids, labels = fact_recall(config, 64, torch.Generator().manual_seed(0))
    assert ids.shape == labels.shape == (64, 20)
    facts = ids < config.n_facts
    assert bool((facts.sum(1) == 1).all()) and not bool(facts[:, 5:].any())  # one fact, in segment 0
    assert bool((ids[:, -1] == config.vocab_size - 1).all())
    assert bool((labels[:, -1] == ids[facts]).all()) and bool((labels[:, :-1] == IGNORE).all())
    assert int(ids.max()) < config.vocab_size
