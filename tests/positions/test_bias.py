"""Score-bias and absolute schemes: ALiBi, T5 buckets, Transformer-XL terms, sinusoidal."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from longarena import positions
from longarena.config import ConfigError
from longarena.positions.alibi import alibi_slopes
from longarena.positions.t5 import t5_bucket


# --- ALiBi --------------------------------------------------------------------------------------


def test_alibi_slopes_match_the_paper_for_8_heads():
    # the paper: a geometric sequence starting at 2^(-8/n) with that same ratio
    start = 2.0 ** (-8.0 / 8)
    expected = [start ** (h + 1) for h in range(8)]  # 1/2, 1/4, ..., 1/256
    assert expected[0] == 0.5 and expected[-1] == 1 / 256
    torch.testing.assert_close(alibi_slopes(8), torch.tensor(expected), rtol=0, atol=0)


def test_alibi_slopes_match_the_paper_for_12_heads():
    # 12 is not a power of two: the 8 slopes of 8 heads, then slopes of 16 heads that fall
    # between them: 16 heads have 2^(-h/2), h = 1..16; the first four odd h are 1, 3, 5, 7
    eight = [2.0**-h for h in range(1, 9)]
    between = [2.0 ** (-h / 2) for h in (1, 3, 5, 7)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(eight + between), rtol=1e-7, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 16, 20])
def test_alibi_slopes_for_any_head_count_are_distinct_and_in_range(n):
    slopes = alibi_slopes(n)
    assert slopes.shape == (n,) and len(set(slopes.tolist())) == n
    assert torch.all((slopes > 0) & (slopes < 1))
    below = 2 ** int(math.log2(n))
    torch.testing.assert_close(slopes[:below], alibi_slopes(below))


def test_alibi_bias_is_minus_slope_times_distance():
    alibi = positions.get("alibi", n_heads=3)
    sym = positions.get("alibi", n_heads=3, mode="symmetric")
    q_pos, k_pos = torch.tensor([4, 5]), torch.tensor([0, 2, 5, 7])
    bias, bias_sym = alibi.bias(q_pos, k_pos), sym.bias(q_pos, k_pos)
    assert bias.shape == (3, 2, 4)
    for h, m in enumerate(alibi_slopes(3).tolist()):
        for a, i in enumerate(q_pos.tolist()):
            for b, j in enumerate(k_pos.tolist()):
                assert bias[h, a, b].item() == pytest.approx(-m * (i - j))
                assert bias_sym[h, a, b].item() == pytest.approx(-m * abs(i - j))


def test_bias_schemes_take_batched_positions():
    for name in ("alibi", "t5"):
        scheme = positions.get(name, n_heads=2)
        q_pos = torch.tensor([[3, 4], [10, 11]])
        k_pos = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
        bias = scheme.bias(q_pos, k_pos)
        assert bias.shape == (2, 2, 2, 5)
        for b in range(2):
            torch.testing.assert_close(bias[b], scheme.bias(q_pos[b], k_pos[b]))


@pytest.mark.parametrize("name,params", [("alibi", {}), ("alibi", {"mode": "symmetric"}), ("t5", {"mode": "bidirectional"})])
def test_score_mod_equals_bias(name, params):
    """flex_attention score modification: same numbers as the explicit bias, offsets included."""
    scheme = positions.get(name, n_heads=3, **params)
    q_pos, k_pos = torch.arange(40, 46), torch.arange(0, 46)
    mod = scheme.score_mod(q_pos, k_pos)
    h = torch.arange(3)[:, None, None]
    qi = torch.arange(6)[None, :, None]
    ki = torch.arange(46)[None, None, :]
    zero = torch.zeros(3, 6, 46)
    torch.testing.assert_close(mod(zero, torch.tensor(0), h, qi, ki), scheme.bias(q_pos, k_pos).detach().expand(3, 6, 46))


# --- T5 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64)])
def test_t5_buckets_equal_transformers(bidirectional, num_buckets, max_distance):
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    rel = torch.arange(-300, 301)
    expected = t5.T5Attention._relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    assert torch.equal(t5_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance), expected)


def test_t5_buckets_by_hand():
    """32 causal buckets, max_distance 128: distances 0..15 exact, then log-spaced, 128+ shares bucket 31."""
    dist = torch.arange(0, 400)
    buckets = t5_bucket(-dist, bidirectional=False, num_buckets=32, max_distance=128).tolist()
    for d in range(400):
        if d < 16:
            want = d
        else:
            want = min(31, 16 + int(math.log(d / 16) / math.log(128 / 16) * 16))
        assert buckets[d] == want, d
    # keys after the query all fall in bucket 0 in causal mode
    assert set(t5_bucket(torch.arange(1, 50), bidirectional=False, num_buckets=32, max_distance=128).tolist()) == {0}
    bi = t5_bucket(torch.tensor([-3, 3, 0]), bidirectional=True, num_buckets=32, max_distance=128).tolist()
    assert bi == [3, 16 + 3, 0]


def test_t5_bias_reads_the_table_and_learns():
    scheme = positions.get("t5", n_heads=2, num_buckets=8, max_distance=16)
    q_pos, k_pos = torch.arange(5), torch.arange(5)
    bias = scheme.bias(q_pos, k_pos)
    buckets = scheme.buckets(q_pos, k_pos)
    for h in range(2):
        torch.testing.assert_close(bias[h], scheme.table[buckets, h])
    bias.sum().backward()
    assert scheme.table.grad is not None and scheme.table.grad.abs().sum() > 0


def test_t5_and_alibi_bad_configs():
    with pytest.raises(ConfigError, match="mode must be one of"):
        positions.get("alibi", mode="bidirectional")
    with pytest.raises(ConfigError, match="mode must be one of"):
        positions.get("t5", mode="symmetric")
    with pytest.raises(ConfigError, match="at least 2 buckets"):
        positions.get("t5", num_buckets=2, mode="bidirectional")
    with pytest.raises(ConfigError, match="max_distance"):
        positions.get("t5", num_buckets=32, max_distance=10)


# --- Transformer-XL -----------------------------------------------------------------------------


def test_xl_score_bias_equals_the_papers_terms():
    """(b) + (c) + (d) of A_ij, computed pair by pair with R_{i-j} built by hand."""
    torch.manual_seed(0)
    h, k = 2, 4
    xl = positions.get("xl", n_heads=h, head_dim=k, init_std=0.5)
    q = torch.randn(1, h, 3, k)
    keys = torch.randn(1, 1, 5, k)  # one kv head shared by both query heads
    q_pos, k_pos = torch.tensor([3, 4, 5]), torch.arange(1, 6)
    got = xl.score_bias(q, keys, q_pos, k_pos)
    inv = [10000.0 ** (-2 * i / (h * k)) for i in range(h * k // 2)]
    w_r = xl.r_proj.weight.detach()  # (H*K, D_r)
    for hh in range(h):
        for a, i in enumerate(q_pos.tolist()):
            for b, j in enumerate(k_pos.tolist()):
                d = i - j
                r_d = torch.tensor([math.sin(d * w) for w in inv] + [math.cos(d * w) for w in inv])
                wr = (w_r @ r_d).view(h, k)[hh]
                want = (q[0, hh, a] @ wr + xl.u[hh] @ keys[0, 0, b] + xl.v[hh] @ wr) / math.sqrt(k)
                assert got[0, hh, a, b].item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)


# --- sinusoidal ---------------------------------------------------------------------------------


def test_sinusoidal_embedding_formula():
    scheme = positions.get("sinusoidal")
    assert scheme.absolute and not positions.get("rope").absolute
    pe = scheme.embed(torch.tensor([0, 1, 17]), 6)
    assert pe.shape == (3, 6)
    for a, p in enumerate([0, 1, 17]):
        for i in range(3):
            w = 10000.0 ** (-2 * i / 6)
            assert pe[a, 2 * i].item() == pytest.approx(math.sin(p * w), abs=1e-6)
            assert pe[a, 2 * i + 1].item() == pytest.approx(math.cos(p * w), abs=1e-6)
    assert scheme.bias(torch.arange(3), torch.arange(3)) is None
    x = torch.randn(1, 1, 3, 8)
    assert torch.equal(scheme.rotate(x, torch.arange(3)), x)
    with pytest.raises(ValueError, match="even width"):
        scheme.embed(torch.arange(3), 5)



@pytest.mark.slow
@pytest.mark.parametrize("name", ["alibi", "t5"])
def test_score_mod_inside_flex_attention_equals_the_reference_with_bias(name):
    """The real consumer: torch's flex_attention (eager, unfused on CPU) with a cache offset."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    from longarena.ops.attention import attention_reference

    torch.manual_seed(0)
    scheme = positions.get(name, n_heads=3)
    q, k, v = torch.randn(1, 3, 6, 8), torch.randn(1, 3, 10, 8), torch.randn(1, 3, 10, 8)
    q_pos, k_pos = torch.arange(4, 10), torch.arange(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is unfused
        out = flex.flex_attention(q, k, v, score_mod=scheme.score_mod(q_pos, k_pos))
    ref = attention_reference(q, k, v, causal=False, bias=scheme.bias(q_pos, k_pos).detach())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_registry_has_every_public_scheme():
    assert {"sinusoidal", "rope", "linear", "ntk", "dynamic_ntk", "yarn", "alibi", "t5", "xl"} <= set(positions.names())
    assert all(positions.summaries()[name] for name in positions.names())
