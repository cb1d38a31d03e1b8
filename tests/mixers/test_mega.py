"""Mega and Mega-chunk: conformance, the EMA against its definition, block-local attention."""

from __future__ import annotations

import math

import pytest
import torch

from longarena import mixers
from longarena.config import ConfigError
from longarena.mixers.base import MixerInputError
from longarena.mixers.mega import MegaConfig
from longarena.ops.linear_attn.diagonal_ssm import diagonal_ssm
from longarena.testing import check_mixer

SMALL = dict(ndim=4, z_dim=8, v_dim=24)


def bf16_exact(m):
    """Round the weights to bf16 values, so the suite's fp32 reference and its bf16 copy
    hold the same weights and only the arithmetic differs."""
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.bfloat16().float())
    return m


# The gradients of the query/key scale and shift are small (attention is nearly uniform at
# initialisation) and come from a softmax backward that cancels most of its terms, so on the
# 13-token continuation bf16 arithmetic puts up to ~9% relative error on them; every other
# output, state and gradient stays within the suite's 6e-2.
BF16_TOLERANCE = {torch.bfloat16: 0.1}


def test_mega_full_attention_conformance():
    check_mixer(lambda: bf16_exact(mixers.get("mega", 16, **SMALL)), long_len=2048, tolerance=BF16_TOLERANCE)


def test_mega_chunk_conformance_is_linear_time_at_16k():
    # chunk 4 with the suite's chunk splits 5, 1, 7, 3 crosses block edges mid-chunk
    check_mixer(
        lambda: bf16_exact(mixers.get("mega", 16, chunk_size=4, **SMALL)), long_len=16384, tolerance=BF16_TOLERANCE
    )


def test_ema_convolution_equals_the_damped_ema_recurrence():
    """h_t = alpha beta x_t + (1 - alpha delta) h_{t-1}, ema_t = sum eta h_t, written out."""
    torch.manual_seed(0)
    m = mixers.get("mega", 4, **SMALL)
    x = torch.randn(2, 90, 4)  # longer than the direct-convolution cut-off: the FFT runs
    log_a, b, c = m.ema_params()
    with torch.no_grad():
        y_conv, h_conv = diagonal_ssm(x, log_a, b, c, mode="conv", backend="fft")
        alpha, delta = torch.sigmoid(m.alpha_logit), torch.sigmoid(m.delta_logit)
        h = torch.zeros(2, 4, 4)
        outs = []
        for t in range(90):
            h = alpha * m.beta * x[:, t, :, None] + (1 - alpha * delta) * h
            outs.append((m.eta * h).sum(-1))
    torch.testing.assert_close(y_conv, torch.stack(outs, 1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h_conv, h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_attention_is_causal_and_block_local(chunk_size):
    """Mega's attention against an explicit masked softmax, with cached keys in front."""
    torch.manual_seed(0)
    m = mixers.get("mega", 8, chunk_size=chunk_size, **SMALL)
    n_cached, t = (2, 7) if chunk_size else (5, 7)
    q = torch.randn(1, t, 8)
    k, v = torch.randn(1, n_cached + t, 8), torch.randn(1, n_cached + t, 24)
    out = m._attend(q, k, v, n_cached, "reference")
    pos = torch.arange(n_cached + t)
    for i in range(t):
        p = n_cached + i
        allowed = pos <= p
        if chunk_size:
            allowed &= pos // chunk_size == p // chunk_size
        scores = (k[0] @ q[0, i]) / math.sqrt(8)
        weights = torch.softmax(scores.masked_fill(~allowed, -math.inf), 0)
        torch.testing.assert_close(out[0, i], weights @ v[0], rtol=1e-5, atol=1e-5)


def test_chunk_state_keeps_only_the_open_block():
    m = mixers.get("mega", 8, chunk_size=4, **SMALL)
    _, state = m(torch.randn(2, 10, 8))
    assert state.position == 10 and state.k.shape == (2, 2, 8) and state.v.shape == (2, 2, 24)
    _, state = m(torch.randn(2, 2, 8), state=state)
    assert state.k.shape[1] == 0
    full = mixers.get("mega", 8, **SMALL)
    _, state = full(torch.randn(2, 10, 8))
    assert state.k.shape == (2, 10, 8)


def test_chunk_as_long_as_the_sequence_is_full_attention():
    torch.manual_seed(0)
    full = mixers.get("mega", 8, **SMALL)
    chunked = mixers.get("mega", 8, chunk_size=32, **SMALL)
    chunked.load_state_dict(full.state_dict())
    x = torch.randn(2, 32, 8)
    torch.testing.assert_close(chunked(x)[0], full(x)[0], rtol=1e-5, atol=1e-6)
    y1 = mixers.get("mega", 8, chunk_size=8, **SMALL)
    y1.load_state_dict(full.state_dict())
    assert (y1(x)[0][:, 8:] - full(x)[0][:, 8:]).abs().max() > 1e-4


def test_state_size():
    m = mixers.get("mega", 16, **SMALL)
    assert m.state_size(100) == 16 * 4 + 100 * (8 + 24)
    chunked = mixers.get("mega", 16, chunk_size=8, **SMALL)
    assert chunked.state_size(100) == chunked.state_size(10_000) == 16 * 4 + 7 * (8 + 24)


def test_config_round_trip_and_bad_configs():
    config = mixers.make_config("mega", 16, chunk_size=8, ndim=2)
    assert MegaConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="chunk_size must be a positive int"):
        mixers.get("mega", 16, chunk_size=0)
    with pytest.raises(ConfigError, match="ndim"):
        mixers.get("mega", 16, ndim=0)
    with pytest.raises(ConfigError, match="v_dim"):
        mixers.get("mega", 16, v_dim=-1)


def test_a_state_from_another_config_is_refused():
    full = mixers.get("mega", 8, **SMALL)
    chunked = mixers.get("mega", 8, chunk_size=4, **SMALL)
    _, state = full(torch.randn(1, 6, 8))
    with pytest.raises(MixerInputError, match="another config"):
        chunked(torch.randn(1, 2, 8), state=state)
    with pytest.raises(MixerInputError, match="another config"):
        mixers.get("mega", 8, ndim=2, z_dim=8, v_dim=24).step(torch.randn(1, 8), state)
