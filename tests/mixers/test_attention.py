"""Softmax attention: conformance, exactness against an independent computation, errors."""

from __future__ import annotations

import math

import pytest
import torch

from longarena import mixers
from longarena.config import ConfigError
from longarena.mixers.attention import AttentionConfig
from longarena.mixers.base import MixerInputError
from longarena.testing import check_mixer


@pytest.mark.parametrize(
    "config",
    [
        dict(n_heads=4),
        dict(n_heads=4, n_kv_heads=2),
        dict(n_heads=4, n_kv_heads=1, position="none"),
    ],
    ids=["mha-rope", "gqa-rope", "mqa-nope"],
)
def test_causal_attention_conformance(config):
    check_mixer(lambda: mixers.get("attention", 32, **config), long_len=16384)


def test_bidirectional_attention_conformance():
    report = check_mixer(lambda: mixers.get("attention", 32, causal=False), long_len=4096)
    assert "padding/bfloat16" in report.passed


def test_matches_hand_written_attention():
    torch.manual_seed(0)
    m = mixers.get("attention", 16, n_heads=2, position="none")
    x = torch.randn(1, 5, 16)
    y, _ = m(x)
    q = x @ m.q_proj.weight.T
    k, v = (x @ m.kv_proj.weight.T).chunk(2, dim=-1)
    outs = []
    for h in range(2):
        sl = slice(8 * h, 8 * h + 8)
        scores = q[0, :, sl] @ k[0, :, sl].T / math.sqrt(8)
        scores = scores.masked_fill(torch.triu(torch.ones(5, 5, dtype=torch.bool), 1), -math.inf)
        outs.append(torch.softmax(scores, -1) @ v[0, :, sl])
    expected = torch.cat(outs, -1) @ m.out_proj.weight.T
    torch.testing.assert_close(y[0], expected, rtol=1e-5, atol=1e-5)


def test_rope_makes_scores_relative():
    """Shifting every position by the same offset leaves outputs unchanged (RoPE is relative)."""
    torch.manual_seed(0)
    m = mixers.get("attention", 16, n_heads=2)
    x = torch.randn(1, 6, 16)
    y0, _ = m(x)
    shifted_cache = m.init_state(1)
    pad = torch.randn(1, 3, 16)
    _, state = m(pad)
    # same tokens at offset 3 but without attending to the pad: mask the cached keys
    state.key_mask = torch.zeros(1, 3, dtype=torch.bool)
    y1, _ = m(x, state=state)
    torch.testing.assert_close(y0, y1, rtol=1e-4, atol=1e-5)
    assert shifted_cache.length == 0


def test_state_size_grows_with_length():
    m = mixers.get("attention", 32, n_heads=4, n_kv_heads=2)
    assert m.state_size(100) == 2 * 2 * 8 * 100
    assert m.state_size(200) == 2 * m.state_size(100)


def test_config_round_trips_through_a_dict():
    config = mixers.make_config("attention", 32, n_heads=8, position_params={"theta": 500.0})
    assert AttentionConfig.from_dict(config.to_dict()) == config
    m = mixers.get("attention", config=config.to_dict())
    assert m.position.config.theta == 500.0


def test_bad_configs_and_inputs_say_what_was_expected():
    with pytest.raises(ConfigError, match="multiple of n_heads"):
        mixers.get("attention", 30, n_heads=4)
    with pytest.raises(ConfigError, match="unknown field"):
        mixers.get("attention", 32, n_head=4)
    with pytest.raises(KeyError, match="known position schemes: .*rope"):
        mixers.get("attention", 32, position="rotary")
    with pytest.raises(KeyError, match="known mixers: .*attention"):
        mixers.get("atention", 32)
    m = mixers.get("attention", 32)
    _, state = m(torch.randn(2, 3, 32))
    with pytest.raises(MixerInputError, match="batch size 2"):
        m(torch.randn(4, 3, 32), state=state)
    bidir = mixers.get("attention", 32, causal=False)
    with pytest.raises(MixerInputError, match="non-causal"):
        bidir.step(torch.randn(2, 32), state)
