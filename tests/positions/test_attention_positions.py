"""Every scheme inside the attention mixer: conformance, and attention with ALiBi by hand."""

from __future__ import annotations

import math

import pytest
import torch

from longarena import mixers
from longarena.positions.alibi import alibi_slopes
from longarena.testing import check_mixer

# long inputs: the bias schemes materialise (H, T, T) scores, so they get shorter ones
CAUSAL = {
    "alibi": ({"position": "alibi"}, 2048),
    "t5": ({"position": "t5"}, 2048),
    "xl": ({"position": "xl"}, 1024),
    "linear": ({"position": "linear", "position_params": {"factor": 4.0}}, 2048),
    "ntk": ({"position": "ntk", "position_params": {"factor": 4.0}}, 2048),
    # original_max_len above the suite's 24-token checks: dynamic NTK is only chunk-consistent
    # within it (see DynamicNtkRope); the long input exercises the rescaled path
    "dynamic_ntk": ({"position": "dynamic_ntk", "position_params": {"factor": 4.0, "original_max_len": 32}}, 2048),
    "yarn": ({"position": "yarn", "position_params": {"factor": 4.0, "original_max_len": 16}}, 2048),
    "sinusoidal": ({"position": "sinusoidal"}, 2048),
}


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_causal_attention_conformance_with_each_scheme(name):
    config, long_len = CAUSAL[name]
    check_mixer(lambda: mixers.get("attention", 32, n_heads=4, n_kv_heads=2, **config), long_len=long_len)


@pytest.mark.parametrize(
    "config",
    [{"position": "alibi", "position_params": {"mode": "symmetric"}}, {"position": "t5", "position_params": {"mode": "bidirectional"}}],
    ids=["alibi-symmetric", "t5-bidirectional"],
)
def test_bidirectional_attention_conformance_with_bias_schemes(config):
    check_mixer(lambda: mixers.get("attention", 32, n_heads=4, causal=False, **config), long_len=1024)


def test_alibi_attention_by_hand():
    torch.manual_seed(0)
    h, dk, t = 2, 8, 5
    m = mixers.get("attention", h * dk, n_heads=h, position="alibi")
    x = torch.randn(1, t, h * dk)
    y, _ = m(x)
    q = x @ m.q_proj.weight.T
    k, v = (x @ m.kv_proj.weight.T).chunk(2, dim=-1)
    slopes = alibi_slopes(h)
    outs = []
    for head in range(h):
        sl = slice(dk * head, dk * head + dk)
        scores = q[0, :, sl] @ k[0, :, sl].T / math.sqrt(dk)
        for i in range(t):
            for j in range(t):
                scores[i, j] = scores[i, j] - slopes[head] * (i - j) if j <= i else -math.inf
        outs.append(torch.softmax(scores, -1) @ v[0, :, sl])
    expected = torch.cat(outs, -1) @ m.out_proj.weight.T
    torch.testing.assert_close(y[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["alibi", "t5", "xl", "yarn"])
def test_relative_schemes_are_shift_invariant(position):
    """The same tokens after a masked-out prefix give the same outputs (positions are relative)."""
    torch.manual_seed(0)
    params = {"factor": 2.0, "original_max_len": 8} if position == "yarn" else {}
    m = mixers.get("attention", 16, n_heads=2, position=position, position_params=params)
    x = torch.randn(1, 6, 16)
    y0, _ = m(x)
    _, state = m(torch.randn(1, 3, 16))
    state.key_mask = torch.zeros(1, 3, dtype=torch.bool)
    y1, _ = m(x, state=state)
    torch.testing.assert_close(y0, y1, rtol=1e-4, atol=1e-5)
