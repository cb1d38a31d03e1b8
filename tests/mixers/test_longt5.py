"""LongT5 TGlobal: conformance, an explicit per-token computation, transient global
block ids, T5 buckets, the reach of global tokens, errors."""

from __future__ import annotations

import math

import pytest
import torch

from longarena import mixers
from longarena.config import ConfigError
from longarena.mixers.longt5 import LongT5Config, global_block_ids, relative_bucket
from longarena.ops.attention.flex import flex_sparse_attention
from longarena.ops.attention.sparse_reference import sparse_attention_reference
from longarena.testing import check_mixer


@pytest.mark.parametrize(
    "config",
    [
        dict(local_radius=3, global_block_size=4, block_size=8),
        dict(local_radius=5, global_block_size=3, block_size=16, num_buckets=8, max_distance=16),
    ],
    ids=["g4", "g3-few-buckets"],
)
def test_longt5_conformance(config):
    # the global part is O(T^2 / g): a shorter long input than for linear mixers
    report = check_mixer(lambda: mixers.get("longt5", 32, **config), long_len=2048)
    assert "padding/bfloat16" in report.passed and "backends/bfloat16" in report.passed


def t5_bucket(rel: int, num_buckets: int, max_distance: int) -> int:
    """T5's bidirectional bucket, from the paper's description, in plain Python."""
    half = num_buckets // 2
    bucket = half if rel > 0 else 0
    n = abs(rel)
    exact = half // 2
    if n < exact:
        return bucket + n
    log_ratio = math.log(n / exact) / math.log(max_distance / exact)
    return bucket + min(half - 1, exact + int(log_ratio * (half - exact)))


def test_relative_bucket_matches_t5_formula():
    rel = torch.arange(-300, 301)
    for nb, md in ((32, 128), (8, 16)):
        expected = torch.tensor([t5_bucket(int(r), nb, md) for r in rel])
        assert torch.equal(relative_bucket(rel, nb, md), expected)


def test_global_block_ids_join_the_tail_to_the_last_complete_block():
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 3:] = False
    ids, valid = global_block_ids(mask, 4)
    assert ids.tolist() == [
        [0, 0, 0, 0, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 0, -1, -1, -1, -1],
        [-1] * 10,
    ]
    assert valid.tolist() == [[True, True], [True, False], [False, False]]


def explicit_longt5(m, x):
    c = m.config
    t, d = x.shape
    g = c.global_block_size
    complete = t // g
    ids = [min(i // g, complete - 1) for i in range(t)]
    sums = torch.stack([x[[i for i in range(t) if ids[i] == j]].sum(0) for j in range(complete)])
    glob = sums / torch.sqrt(sums.pow(2).mean(-1, keepdim=True) + c.eps) * m.global_norm_weight
    q = x @ m.q_proj.weight.T
    k, v = (torch.cat((x, glob)) @ m.kv_proj.weight.T).chunk(2, -1)
    hd = m.head_dim
    out = torch.zeros(t, d)
    for h in range(m.n_heads):
        sl = slice(h * hd, (h + 1) * hd)
        for i in range(t):
            keys = [j for j in range(t) if abs(i - j) <= c.local_radius]
            bias = [m.local_bias.weight[t5_bucket(j - i, c.num_buckets, c.max_distance), h] for j in keys]
            bias += [
                m.global_bias.weight[t5_bucket(j - ids[i], c.num_buckets, c.max_distance), h] for j in range(complete)
            ]
            keys += [t + j for j in range(complete)]
            scores = k[keys, sl] @ q[i, sl] / math.sqrt(hd) + torch.stack(bias)
            out[i, sl] = torch.softmax(scores, 0) @ v[keys, sl]
    return out @ m.out_proj.weight.T


def test_matches_explicit_per_token_computation():
    torch.manual_seed(0)
    config = dict(n_heads=2, local_radius=2, global_block_size=4, num_buckets=8, max_distance=12, block_size=8)
    m = mixers.get("longt5", 16, **config)
    with torch.no_grad():
        m.local_bias.weight.normal_()
        m.global_bias.weight.normal_()
        m.global_norm_weight.uniform_(0.5, 1.5)
    x = torch.randn(1, 19, 16)  # 4 complete global blocks, a tail of 3 joins the last
    expected = explicit_longt5(m, x[0])
    for backend in ("reference", "blocked"):
        with m.use_backend(backend):
            y, _ = m(x)
        torch.testing.assert_close(y[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_score_mod_matches_reference():
    """The relative biases as a flex score_mod (flex's eager path on CPU, no gradients)."""
    torch.manual_seed(0)
    m = mixers.get("longt5", 32, local_radius=3, global_block_size=4, block_size=16)
    x = torch.randn(2, 37, 32)
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[1, 30:] = False
    with torch.no_grad():
        m.local_bias.weight.normal_()
        m.global_bias.weight.normal_()
        inputs = m.attention_inputs(x, mask)
        ref = sparse_attention_reference(**inputs)
        y = flex_sparse_attention(**inputs, block_size=16, compiled=False)
    torch.testing.assert_close(y[0], ref[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y[1, :, :30], ref[1, :, :30], rtol=1e-4, atol=1e-5)


def test_transient_global_tokens_reach_every_position():
    torch.manual_seed(0)
    m = mixers.get("longt5", 16, n_heads=2, local_radius=1, global_block_size=4)
    x = torch.randn(1, 24, 16, requires_grad=True)
    y, _ = m(x)
    for t in range(24):
        (g,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        assert (g[0].abs().sum(-1) > 0).all(), f"output {t} misses some input though every block is a global token"


def test_config_round_trips():
    config = mixers.make_config("longt5", 32, local_radius=7, global_block_size=8)
    assert LongT5Config.from_dict(config.to_dict()) == config


def test_bad_configs_say_what_was_expected():
    with pytest.raises(ConfigError, match="global_block_size must be an int >= 1"):
        mixers.get("longt5", 32, global_block_size=0)
    with pytest.raises(ConfigError, match="num_buckets must be an even int"):
        mixers.get("longt5", 32, num_buckets=7)
    with pytest.raises(ConfigError, match="multiple of n_heads"):
        mixers.get("longt5", 30, n_heads=4)
    # shorter than one global block: no global tokens, local attention only
    m = mixers.get("longt5", 32, global_block_size=16)
    y, _ = m(torch.randn(2, 5, 32))
    assert torch.isfinite(y).all()
