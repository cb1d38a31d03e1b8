"""Perceiver classifier and Perceiver AR: shapes, padding, weight sharing, causality of the
AR cross-attention, learning toy tasks, and clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longarena import models
from longarena.config import ConfigError
from longarena.models.perceiver import PerceiverARConfig, PerceiverConfig


def _small(**overrides):
    config = {"vocab_size": 10, "num_classes": 3, "d_model": 16, "d_latent": 16, "n_latents": 4, "n_heads": 2,
                  "n_latent_layers": 1, "n_repeats": 3}
    return models.get("perceiver", **{**config, **overrides})


def test_classifier_shapes_and_registry():
    torch.manual_seed(0)
    m = _small()
    assert m(torch.randint(0, 10, (2, 50))).shape == (2, 3)
    # any length: latents read inputs of any size
    assert m(torch.randint(0, 10, (1, 3))).shape == (1, 3)
    assert {"perceiver", "perceiver_ar"} <= set(models.names())
    config = PerceiverConfig(d_model=16, d_latent=16, n_latents=4)
    assert PerceiverConfig.from_dict(config.to_dict()) == config


def test_weight_sharing_across_repeats():
    shared, separate = _small(share_weights=True), _small(share_weights=False)
    # shared: the first cross-attend, one for the later repeats, and one latent stack
    assert len(shared.cross) == 2 and len(shared.stacks) == 1
    assert len(separate.cross) == 3 and len(separate.stacks) == 3
    n_shared = sum(p.numel() for p in shared.parameters())
    n_separate = sum(p.numel() for p in separate.parameters())
    per_cross = sum(p.numel() for p in shared.cross[0].parameters())
    per_stack = sum(p.numel() for p in shared.stacks[0].parameters())
    assert n_separate - n_shared == per_cross + 2 * per_stack


def test_padding_does_not_leak():
    torch.manual_seed(0)
    m = _small(pad_id=0).eval()
    ids = torch.randint(1, 10, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(m(padded), m(ids), rtol=1e-5, atol=1e-5)
        # an explicit mask works the same and overrides pad_id
        garbage = torch.cat([ids, torch.randint(1, 10, (1, 5))], dim=1)
        mask = torch.arange(12)[None] < 7
        torch.testing.assert_close(m(garbage, attention_mask=mask), m(ids), rtol=1e-5, atol=1e-5)


def test_perceiver_classifier_learns_a_toy_task():
    """Label: does the marker token 1 occur anywhere in 32 tokens?"""
    torch.manual_seed(0)
    m = models.get("perceiver", vocab_size=8, num_classes=2, d_model=16, d_latent=16, n_latents=4,
                   n_heads=2, n_latent_layers=1, n_repeats=1)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)

    def batch(n):
        ids = torch.randint(2, 8, (n, 32))
        labels = torch.randint(0, 2, (n,))
        where = torch.randint(0, 32, (n,))
        ids[labels == 1, where[labels == 1]] = 1
        return ids, labels

    for _ in range(120):
        ids, labels = batch(32)
        loss = F.cross_entropy(m(ids), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ids, labels = batch(256)
    with torch.no_grad():
        accuracy = (m.eval()(ids).argmax(-1) == labels).float().mean().item()
    assert accuracy > 0.9, accuracy


def test_dual_encoder_reads_both_sequences_with_one_encoder():
    torch.manual_seed(0)
    config = {"vocab_size": 10, "num_classes": 2, "d_model": 16, "d_latent": 16, "n_latents": 4, "n_heads": 2,
              "n_latent_layers": 1, "n_repeats": 1, "pad_id": 0}
    m = models.get("perceiver_dual", **config).eval()
    a, b = torch.randint(1, 10, (2, 9)), torch.randint(1, 10, (2, 5))
    with torch.no_grad():
        logits = m(a, b)
        assert logits.shape == (2, 2)
        u, v = m.encode(a), m.encode(b)
        expected = m.head(torch.cat([u, v, u * v, u - v], dim=-1))
        torch.testing.assert_close(logits, expected)
        # padding of the second sequence does not leak
        padded_b = torch.cat([b, torch.zeros(2, 4, dtype=torch.long)], dim=1)
        torch.testing.assert_close(m(a, padded_b), logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="input_ids_2 must be an integer tensor"):
        m(a, torch.randn(2, 5))


def _ar(**overrides):
    config = {"vocab_size": 11, "d_model": 16, "n_latents": 6, "n_heads": 2, "n_layers": 2}
    return models.get("perceiver_ar", **{**config, **overrides})


def test_perceiver_ar_is_causal_and_reads_the_whole_prefix():
    torch.manual_seed(0)
    m = _ar().eval()
    t, n = 20, 6
    ids = torch.randint(0, 11, (1, t))
    with torch.no_grad():
        base = m(ids)
        assert base.shape == (1, n, 11)
        for pos in (0, 9, t - n, t - 3):
            changed = ids.clone()
            changed[0, pos] = (changed[0, pos] + 1) % 11
            diff = (m(changed) - base).abs().amax(-1)[0]  # (N,)
            first_affected = max(0, pos - (t - n))
            assert (diff[:first_affected] == 0).all(), f"token {pos} changed earlier logits"
            assert (diff[first_affected:] > 0).all(), f"token {pos} did not reach later logits"
        # shorter than the latent count: every position is a latent
        assert m(ids[:, :4]).shape == (1, 4, 11)


def test_perceiver_ar_left_padding_does_not_leak():
    torch.manual_seed(0)
    m = _ar().eval()
    ids = torch.randint(0, 11, (1, 9))
    padded = torch.cat([torch.randint(0, 11, (1, 4)), ids], dim=1)
    mask = torch.arange(13)[None] >= 4
    with torch.no_grad():
        # positions differ by the pad offset, but RoPE is relative, so outputs agree
        torch.testing.assert_close(m(padded, attention_mask=mask), m(ids), rtol=1e-4, atol=1e-5)


def test_perceiver_ar_learns_a_periodic_sequence():
    """Next token = previous token + 1 (mod 5) from a random start: loss falls near zero."""
    torch.manual_seed(0)
    m = _ar(vocab_size=5)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        start = torch.randint(0, 5, (16, 1))
        ids = (start + torch.arange(24)) % 5
        loss = m.loss(ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.0 and losses[-1] < 0.1, (losses[0], losses[-1])


def test_bad_inputs_and_configs_say_what_was_expected():
    m = _small()
    with pytest.raises(ValueError, match=r"integer tensor of shape \(B, T\)"):
        m(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"token ids of input_ids must lie in \[0, vocab_size = 10\)"):
        m(torch.tensor([[3, 10]]))
    with pytest.raises(ValueError, match="attention_mask must be a bool tensor"):
        m(torch.tensor([[3, 4]]), attention_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"d_latent \(10\) must be a multiple of n_heads \(4\)"):
        models.get("perceiver", d_latent=10, n_heads=4)
    with pytest.raises(ConfigError, match="n_latents must be a positive int"):
        models.get("perceiver_ar", n_latents=0)
    with pytest.raises(ValueError, match="integer tensor"):
        _ar()(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"attention_mask must be a bool tensor of shape \(B, T\) = \(1, 4\)"):
        _ar()(torch.tensor([[1, 2, 3, 4]]), attention_mask=torch.ones(1, 4))
    config = PerceiverARConfig(d_model=32, n_latents=8)
    assert PerceiverARConfig.from_dict(config.to_dict()) == config
