"""Longformer: conformance, an explicit per-token computation, the reach of global tokens,
the bounded cache of the causal variant, errors."""

from __future__ import annotations

import math

import pytest
import torch

from longarena import mixers
from longarena.config import ConfigError
from longarena.mixers.base import MixerInputError
from longarena.mixers.longformer import LongformerConfig
from longarena.testing import check_mixer


@pytest.mark.parametrize(
    "config",
    [
        dict(window=4, dilation=(1, 2, 1, 3), global_tokens=(0, 5), block_size=16),
        dict(window=3, position="none", block_size=8),
    ],
    ids=["dilated-globals", "window-nope"],
)
def test_bidirectional_longformer_conformance(config):
    report = check_mixer(lambda: mixers.get("longformer", 32, **config), long_len=16384)
    assert "padding/bfloat16" in report.passed and "backends/bfloat16" in report.passed


def test_causal_longformer_conformance():
    report = check_mixer(
        lambda: mixers.get("longformer", 32, causal=True, window=3, dilation=(1, 2, 1, 2), block_size=8),
        long_len=16384,
    )
    assert {"step/float32", "chunked/float32", "causality/float32"} <= set(report.passed)


def explicit_longformer(m, x):
    """Per token and head: softmax over its allowed keys, written with Python loops."""
    t = x.shape[0]
    hd = m.head_dim
    q, (k, v) = x @ m.q_proj.weight.T, (x @ m.kv_proj.weight.T).chunk(2, -1)
    qg, (kg, vg) = x @ m.global_q_proj.weight.T, (x @ m.global_kv_proj.weight.T).chunk(2, -1)
    dil = m.config.dilation
    out = torch.zeros(t, m.d_model)
    for h in range(m.n_heads):
        sl = slice(h * hd, (h + 1) * hd)
        for i in range(t):
            if i in m.global_tokens:
                keys = list(range(t))
                qi, kk, vv = qg[i, sl], kg[keys, sl], vg[keys, sl]
            else:
                d = dil[h]
                keys = [
                    j
                    for j in range(t)
                    if (abs(i - j) <= m.config.window * d and (i - j) % d == 0) or j in m.global_tokens
                ]
                qi, kk, vv = q[i, sl], k[keys, sl], v[keys, sl]
            w = torch.softmax(kk @ qi / math.sqrt(hd), 0)
            out[i, sl] = w @ vv
    return out @ m.out_proj.weight.T


def test_matches_explicit_per_token_computation():
    torch.manual_seed(0)
    m = mixers.get(
        "longformer", 16, n_heads=2, window=2, dilation=(1, 2), global_tokens=(0, 5), position="none", block_size=4
    )
    with torch.no_grad():  # make the global projections differ from the local ones
        m.global_q_proj.weight.mul_(-0.7)
        m.global_kv_proj.weight.add_(0.1)
    x = torch.randn(1, 13, 16)
    for backend in ("reference", "blocked"):
        with m.use_backend(backend):
            y, _ = m(x)
        torch.testing.assert_close(y[0], explicit_longformer(m, x[0]), rtol=1e-4, atol=1e-5)


def dependency(m, x):
    """(T, T) bool: does output t have a gradient from input s?"""
    x = x.clone().requires_grad_(True)
    y, _ = m(x)
    rows = []
    for t in range(x.shape[1]):
        (g,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        rows.append(g[0].abs().sum(-1) > 0)
    return torch.stack(rows)


def test_global_tokens_reach_every_position_and_nothing_else_leaks():
    torch.manual_seed(0)
    t, window, dil, glob = 40, 2, (1, 3), (0, 17)
    m = mixers.get("longformer", 16, n_heads=2, window=window, dilation=dil, global_tokens=glob, block_size=8)
    dep = dependency(m, torch.randn(1, t, 16))
    assert dep[:, list(glob)].all(), "some output has no gradient from a global input"
    assert dep[list(glob)].all(), "a global token does not see every input"
    expected = torch.zeros(t, t, dtype=torch.bool)
    for i in range(t):
        for j in range(t):
            in_window = any(abs(i - j) <= window * d and (i - j) % d == 0 for d in dil)
            expected[i, j] = in_window or i in glob or j in glob
    assert torch.equal(dep, expected)


def test_causal_cache_is_bounded_by_the_window():
    m = mixers.get("longformer", 32, causal=True, window=5, dilation=(1, 2, 1, 3))
    span = 5 * 3
    _, state = m(torch.randn(2, 100, 32))
    assert state.k.shape == (2, 4, span, 8) and state.position == 100
    assert m.state_size(10) == 2 * 32 * 10
    assert m.state_size(span) == m.state_size(10_000) == 2 * 32 * span
    state = m.init_state(2)
    for _ in range(span + 4):
        _, state = m.step(torch.randn(2, 32), state)
    assert state.length == span


def test_window_larger_than_the_sequence_is_dense_attention():
    torch.manual_seed(0)
    m = mixers.get("longformer", 16, n_heads=2, window=64, global_tokens=(), position="none")
    x = torch.randn(1, 9, 16)
    y, _ = m(x)
    q, (k, v) = x[0] @ m.q_proj.weight.T, (x[0] @ m.kv_proj.weight.T).chunk(2, -1)
    heads = [
        torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(8), -1) @ v[:, s] for s in (slice(0, 8), slice(8, 16))
    ]
    torch.testing.assert_close(y[0], torch.cat(heads, -1) @ m.out_proj.weight.T, rtol=1e-4, atol=1e-5)


def test_config_round_trips_and_defaults():
    config = mixers.make_config("longformer", 32, dilation=(1, 2, 1, 2), global_tokens=(0, 3))
    assert LongformerConfig.from_dict(config.to_dict()) == config
    assert mixers.get("longformer", 32).global_tokens == (0,)
    assert mixers.get("longformer", 32, causal=True).global_tokens == ()


def test_bad_configs_and_inputs_say_what_was_expected():
    with pytest.raises(ConfigError, match="causal=True takes global_tokens=()"):
        mixers.get("longformer", 32, causal=True, global_tokens=(0,))
    with pytest.raises(ConfigError, match="one per head"):
        mixers.get("longformer", 32, dilation=(1, 2))
    with pytest.raises(ConfigError, match="window must be an int >= 0"):
        mixers.get("longformer", 32, window=-3)
    with pytest.raises(ConfigError, match="'alibi' adds a dense score bias"):
        mixers.get("longformer", 32, position="alibi")
    m = mixers.get("longformer", 32, global_tokens=(0, 12))
    with pytest.raises(MixerInputError, match=r"global token\(s\) at \[12\] but the input has only 8 tokens"):
        m(torch.randn(1, 8, 32))
    with pytest.raises(RuntimeError, match="backend 'flex' .* cannot run on cpu"):
        mixers.get("longformer", 32, backend="flex")(torch.randn(1, 8, 32))
