"""Performer: conformance, agreement with exact attention as features grow, feature redraws,
a toy classification task, and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from longarena import mixers
from longarena.config import ConfigError
from longarena.mixers.performer import PerformerConfig
from longarena.testing import check_mixer
from longarena.testing.conformance import rel_error


@pytest.mark.parametrize(
    "config",
    [{}, {"kernel": "relu"}, {"causal": False}],
    ids=["causal-softmax", "causal-relu", "bidirectional"],
)
def test_performer_conformance(config):
    report = check_mixer(
        lambda: mixers.get("performer", 16, n_heads=2, n_features=16, chunk_size=8, **config), long_len=16384
    )
    if config.get("causal", True):
        assert {"step/float32", "chunked/bfloat16", "causality/float32"} <= set(report.passed)


def _attention_twin(m, causal: bool):
    """Exact softmax attention with the Performer's weights."""
    a = mixers.get("attention", m.d_model, n_heads=m.n_heads, causal=causal, position="none")
    a.load_state_dict({"q_proj.weight": m.q_proj.weight, "kv_proj.weight": m.kv_proj.weight,
                       "out_proj.weight": m.out_proj.weight})
    return a.eval()


@pytest.mark.parametrize("causal", [False, True])
def test_approaches_exact_attention_as_features_grow(causal):
    torch.manual_seed(0)
    x = 0.5 * torch.randn(2, 32, 16)
    errors = []
    for m_features in (4, 64, 1024):
        torch.manual_seed(1)
        m = mixers.get("performer", 16, n_heads=2, n_features=m_features, causal=causal).eval()
        with torch.no_grad():
            y, _ = m(x)
            y_exact, _ = _attention_twin(m, causal)(x)
        errors.append(rel_error(y, y_exact))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.1, errors


def test_features_fixed_in_eval_and_redrawn_on_schedule_in_training():
    torch.manual_seed(0)
    m = mixers.get("performer", 16, n_heads=2, n_features=8, feature_redraw_interval=2)
    x = torch.randn(1, 5, 16)
    m.eval()
    first = m.projection.clone()
    y1, _ = m(x)
    for _ in range(3):
        y2, _ = m(x)
    assert torch.equal(m.projection, first) and torch.equal(y1, y2)

    m.train()
    seen = []
    for _ in range(5):
        m(x)
        seen.append(m.projection.clone())
    # forwards 1-2 use the initial draw, 3-4 a new one, 5 another
    assert torch.equal(seen[0], first) and torch.equal(seen[1], first)
    assert not torch.equal(seen[2], first) and torch.equal(seen[2], seen[3])
    assert not torch.equal(seen[4], seen[3])

    # a forward that continues a sequence never redraws: its state was summed with the current features
    m.train()
    _, state = m(x)
    kept = m.projection.clone()
    for _ in range(4):
        _, state = m(x, state=state)
    assert torch.equal(m.projection, kept)

    never = mixers.get("performer", 16, n_heads=2, n_features=8, feature_redraw_interval=0).train()
    before = never.projection.clone()
    for _ in range(3):
        never(x)
    assert torch.equal(never.projection, before)
    never.redraw_features(torch.Generator().manual_seed(5))
    assert not torch.equal(never.projection, before)
    # the draw is a buffer: saved with the weights, so a reloaded model gives the same outputs
    assert "projection" in never.state_dict()


def test_random_directions_stay_float32_under_a_dtype_cast():
    m = mixers.get("performer", 16, n_heads=2, n_features=8)
    before = m.projection.clone()
    m.to(torch.bfloat16)
    assert m.q_proj.weight.dtype == torch.bfloat16
    assert m.projection.dtype == torch.float32 and torch.equal(m.projection, before)


def test_state_is_constant_size():
    m = mixers.get("performer", 32, n_heads=4, n_features=16)
    assert m.state_size(10) == m.state_size(100_000) == 4 * 16 * (8 + 1)
    state = m.init_state(3)
    assert state.kv.shape == (3, 4, 16, 8) and state.k_sum.shape == (3, 4, 16)
    _, state = m(torch.randn(3, 7, 32), state=state)
    assert state.kv.dtype == torch.float32


def test_bad_configs_say_what_was_expected():
    with pytest.raises(ConfigError, match="n_features must be a positive int"):
        mixers.get("performer", 16, n_features=0)
    with pytest.raises(ConfigError, match="kernel must be one of"):
        mixers.get("performer", 16, kernel="cosine")
    with pytest.raises(ConfigError, match="multiple of n_heads"):
        mixers.get("performer", 18, n_heads=4)
    config = mixers.make_config("performer", 32, n_features=24, kernel="relu")
    assert PerformerConfig.from_dict(config.to_dict()) == config


class _TinyClassifier(nn.Module):
    def __init__(self, vocab: int, d: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norm = nn.LayerNorm(d)
        self.mixer = mixers.get("performer", d, n_heads=2, n_features=16, causal=False)
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        x = self.embed(ids)
        y, _ = self.mixer(self.norm(x))
        return self.head((x + y).mean(1))


def test_performer_classifier_learns_a_toy_task():
    """Label: does the marker token 1 occur in the sequence? Needs mixing across positions."""
    torch.manual_seed(0)
    model = _TinyClassifier(vocab=8, d=16, classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def batch(n):
        ids = torch.randint(2, 8, (n, 16))
        labels = torch.randint(0, 2, (n,))
        where = torch.randint(0, 16, (n,))
        ids[labels == 1, where[labels == 1]] = 1
        return ids, labels

    for _ in range(150):
        ids, labels = batch(32)
        loss = nn.functional.cross_entropy(model(ids), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ids, labels = batch(256)
    with torch.no_grad():
        accuracy = (model(ids).argmax(-1) == labels).float().mean().item()
    assert accuracy > 0.9, accuracy
