"""RoPE and its scalings: exact reduction to plain RoPE, agreement with transformers, rotation maths."""

from __future__ import annotations

import math

import pytest
import torch

from longarena import positions
from longarena.config import ConfigError
from longarena.positions.rope_scaling import yarn_attention_factor

SCALINGS = {
    "linear": {},
    "ntk": {},
    "dynamic_ntk": {"original_max_len": 64},
    "yarn": {"original_max_len": 64},
}


def rotate_by_hand(x, positions_, inv_freq, scale=1.0):
    """Rotate pair (x_i, x_{i+K/2}) by angle p * w_i, one pair and one position at a time."""
    out = torch.empty_like(x, dtype=torch.float64)
    half = x.shape[-1] // 2
    for t, p in enumerate(positions_.tolist()):
        for i in range(half):
            a = p * float(inv_freq[i])
            c, s = math.cos(a), math.sin(a)
            x1, x2 = x[..., t, i].double(), x[..., t, i + half].double()
            out[..., t, i] = scale * (x1 * c - x2 * s)
            out[..., t, i + half] = scale * (x1 * s + x2 * c)
    return out


def test_plain_rope_is_a_rotation_of_channel_pairs():
    torch.manual_seed(0)
    rope = positions.get("rope", head_dim=8, theta=100.0)
    expected_freq = torch.tensor([100.0 ** (-2 * i / 8) for i in range(4)])
    torch.testing.assert_close(rope.inv_freq, expected_freq, rtol=1e-7, atol=0)
    x = torch.randn(1, 2, 5, 8)
    pos = torch.tensor([0, 3, 7, 100, 2049])
    torch.testing.assert_close(rope.rotate(x, pos).double(), rotate_by_hand(x, pos, rope.inv_freq), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", sorted(SCALINGS))
def test_factor_one_is_plain_rope_exactly(method):
    rope = positions.get("rope", head_dim=16, theta=500.0)
    scaled = positions.get(method, head_dim=16, theta=500.0, factor=1.0, **SCALINGS[method])
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 16)
    pos = torch.arange(64) + 0  # within the trained length: dynamic NTK is defined as plain RoPE there
    assert torch.equal(scaled.rotate(x, pos), rope.rotate(x, pos))
    if method != "dynamic_ntk":
        assert torch.equal(scaled.inv_freq, rope.inv_freq)
        assert scaled.attention_scale == 1.0
        # and at positions far beyond any trained length
        far = torch.arange(10_000, 10_064)
        assert torch.equal(scaled.rotate(x, far), rope.rotate(x, far))


def test_scalings_change_frequencies_as_their_formulas_say():
    k, theta, s = 16, 1e4, 4.0
    plain = positions.get("rope", head_dim=k, theta=theta).inv_freq.double()
    lin = positions.get("linear", head_dim=k, theta=theta, factor=s).inv_freq.double()
    torch.testing.assert_close(lin, plain / s, rtol=1e-7, atol=0)
    ntk = positions.get("ntk", head_dim=k, theta=theta, factor=s).inv_freq.double()
    # NTK-aware keeps the fastest pair and slows the slowest by exactly s
    assert ntk[0] == plain[0]
    torch.testing.assert_close(ntk[-1], plain[-1] / s, rtol=1e-6, atol=0)
    assert torch.all(ntk[1:] < plain[1:]) and torch.all(ntk >= lin)
    yarn = positions.get("yarn", head_dim=k, theta=theta, factor=s, original_max_len=64)
    y = yarn.inv_freq.double()
    # fast pairs (many turns over 64 tokens) extrapolate, slow pairs interpolate
    turns = 64 * plain / (2 * math.pi)
    assert torch.equal(y[turns > 32], plain[turns > 32].float().double())
    torch.testing.assert_close(y[turns < 1], plain[turns < 1] / s, rtol=1e-6, atol=0)
    assert torch.all((y >= plain / s * (1 - 1e-6)) & (y <= plain * (1 + 1e-6)))
    assert yarn.attention_scale == pytest.approx(0.1 * math.log(s) + 1)


def test_dynamic_ntk_depends_on_the_longest_position():
    k, theta, s, m = 16, 1e4, 2.0, 32
    dyn = positions.get("dynamic_ntk", head_dim=k, theta=theta, factor=s, original_max_len=m)
    plain = positions.get("rope", head_dim=k, theta=theta)
    assert torch.equal(dyn.inv_freq_for(m), plain.inv_freq)
    length = 96
    scale = s * length / m - (s - 1)
    expected = positions.get("rope", head_dim=k, theta=theta * scale ** (k / (k - 2))).inv_freq
    torch.testing.assert_close(dyn.inv_freq_for(length), expected, rtol=3e-7, atol=0)
    x = torch.randn(1, 1, 4, k)
    pos = torch.tensor([0, 1, 2, length - 1])
    torch.testing.assert_close(dyn.rotate(x, pos), positions.get("rope", head_dim=k, theta=theta * scale ** (k / (k - 2))).rotate(x, pos))


def test_batched_positions_rotate_each_row_at_its_own_positions():
    """Packed / offset sequences: (B, T) position ids equal per-row (T,) calls."""
    torch.manual_seed(0)
    for name in ("rope", "yarn"):
        scheme = positions.get(name, head_dim=8, **({"factor": 2.0, "original_max_len": 16} if name == "yarn" else {}))
        x = torch.randn(2, 3, 6, 8)
        pos = torch.tensor([[0, 1, 2, 0, 1, 2], [5, 6, 7, 8, 9, 10]])
        out = scheme.rotate(x, pos)
        for b in range(2):
            torch.testing.assert_close(out[b : b + 1], scheme.rotate(x[b : b + 1], pos[b]))


@pytest.mark.parametrize("method", ["rope", *sorted(SCALINGS)])
def test_scores_depend_on_distance_only(method):
    torch.manual_seed(0)
    params = {} if method == "rope" else {"factor": 3.0, **SCALINGS[method]}
    scheme = positions.get(method, head_dim=16, **params)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i, j):
        return (scheme.rotate(q, torch.tensor([i])) * scheme.rotate(k, torch.tensor([j]))).sum().item()

    # dynamic NTK rescales by the length of each call; single-token calls within the trained length stay plain
    for i, j in [(5, 2), (30, 27), (60, 57)]:
        assert score(i, j) == pytest.approx(score(3, 0), rel=1e-4, abs=1e-5)


def test_frequencies_stay_float32_under_bf16():
    scheme = positions.get("yarn", head_dim=16, factor=4.0, original_max_len=64)
    before = scheme.inv_freq.clone()
    scheme.to(torch.bfloat16)
    assert scheme.inv_freq.dtype == torch.float32 and torch.equal(scheme.inv_freq, before)


def test_bad_configs_say_what_was_expected():
    with pytest.raises(ConfigError, match="factor must be a number >= 1"):
        positions.get("linear", head_dim=8, factor=0.5)
    with pytest.raises(ConfigError, match="factor must be a number >= 1"):
        positions.get("yarn", head_dim=8, factor=float("nan"))
    with pytest.raises(ConfigError, match="even head_dim"):
        positions.get("ntk", head_dim=7, factor=2.0)
    with pytest.raises(ConfigError, match="beta_fast > beta_slow"):
        positions.get("yarn", head_dim=8, factor=2.0, beta_fast=1.0, beta_slow=2.0)
    with pytest.raises(ConfigError, match="original_max_len"):
        positions.get("dynamic_ntk", head_dim=8, factor=2.0, original_max_len=0)
    with pytest.raises(ConfigError, match="unknown field"):
        positions.get("rope", head_dim=8, factor=2.0)
    with pytest.raises(KeyError, match="known position schemes: .*yarn"):
        positions.get("yarn2", head_dim=8)
    with pytest.raises(ValueError, match=r"positions must have shape \(T,\) or \(B, T\)"):
        positions.get("rope", head_dim=8).rotate(torch.randn(1, 1, 4, 8), torch.arange(5))


# --- against transformers' own implementation ---------------------------------------------------


def _hf_config(head_dim, max_len, **rope):
    transformers = pytest.importorskip("transformers")
    rope.setdefault("rope_theta", 10000.0)
    return transformers.LlamaConfig(
        hidden_size=2 * head_dim, num_attention_heads=2, max_position_embeddings=max_len, rope_parameters=rope
    )


def _hf_init(kind):
    utils = pytest.importorskip("transformers.modeling_rope_utils")
    return utils.ROPE_INIT_FUNCTIONS[kind]


# float32 rounding of theta^(-2i/K): transformers rounds at each step, we once from float64
FREQ_TOL = dict(rtol=3e-7, atol=0)


@pytest.mark.parametrize("head_dim,theta", [(8, 1e4), (64, 1e4), (128, 5e5)])
@pytest.mark.parametrize("factor", [1.0, 2.0, 3.5, 8.0])
def test_frequencies_and_scaling_equal_transformers(head_dim, theta, factor):
    m = 64
    linear_hf, scale_hf = _hf_init("linear")(_hf_config(head_dim, m, rope_type="linear", factor=factor, rope_theta=theta))
    ours = positions.get("linear", head_dim=head_dim, theta=theta, factor=factor)
    torch.testing.assert_close(ours.inv_freq, linear_hf, **FREQ_TOL)
    assert ours.attention_scale == scale_hf

    for length in (m // 2, m, 5 * m):
        dyn_hf, scale_hf = _hf_init("dynamic")(
            _hf_config(head_dim, m, rope_type="dynamic", factor=factor, rope_theta=theta), None, seq_len=length
        )
        dyn = positions.get("dynamic_ntk", head_dim=head_dim, theta=theta, factor=factor, original_max_len=m)
        torch.testing.assert_close(dyn.inv_freq_for(length), dyn_hf, **FREQ_TOL)
        assert scale_hf == 1.0

    # static NTK-aware is transformers' dynamic formula at factor 1 evaluated at length factor * m
    ntk_hf, _ = _hf_init("dynamic")(
        _hf_config(head_dim, m, rope_type="dynamic", factor=1.0, rope_theta=theta), None, seq_len=int(factor * m)
    )
    ntk = positions.get("ntk", head_dim=head_dim, theta=theta, factor=factor)
    torch.testing.assert_close(ntk.inv_freq, ntk_hf, **FREQ_TOL)

    for beta_fast, beta_slow in [(32, 1), (16, 2)]:
        hf_cfg = _hf_config(
            head_dim, m, rope_type="yarn", factor=factor, rope_theta=theta,
            original_max_position_embeddings=m, beta_fast=beta_fast, beta_slow=beta_slow,
        )
        yarn_hf, scale_hf = _hf_init("yarn")(hf_cfg)
        yarn = positions.get(
            "yarn", head_dim=head_dim, theta=theta, factor=factor, original_max_len=m,
            beta_fast=float(beta_fast), beta_slow=float(beta_slow),
        )
        torch.testing.assert_close(yarn.inv_freq, yarn_hf, **FREQ_TOL)
        assert yarn.attention_scale == pytest.approx(scale_hf, rel=1e-12)
        assert yarn.attention_scale == pytest.approx(yarn_attention_factor(factor), rel=1e-12)


def test_rotation_equals_transformers_llama_rotary():
    """Same q/k after rotation as transformers' LlamaRotaryEmbedding + apply_rotary_pos_emb (YaRN)."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    cfg = _hf_config(16, 32, rope_type="yarn", factor=4.0, original_max_position_embeddings=32)
    hf_rotary = llama.LlamaRotaryEmbedding(cfg)
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 10, 16), torch.randn(2, 2, 10, 16)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [100, 101, 102, 103, 104, 0, 1, 2, 3, 4]])
    cos, sin = hf_rotary(q, pos)
    q_hf, k_hf = llama.apply_rotary_pos_emb(q, k, cos, sin)
    ours = positions.get("yarn", head_dim=16, factor=4.0, original_max_len=32)
    torch.testing.assert_close(ours.rotate(q, pos), q_hf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.rotate(k, pos), k_hf, rtol=1e-5, atol=1e-5)
