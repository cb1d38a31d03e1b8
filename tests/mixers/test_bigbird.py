"""BigBird: conformance (ITC and ETC), an explicit per-token computation, the reach of
global tokens, seeded random blocks, errors."""

from __future__ import annotations

import math

import pytest
import torch

from longarena import mixers
from longarena.config import ConfigError
from longarena.mixers.bigbird import BigBirdConfig
from longarena.testing import check_mixer


@pytest.mark.parametrize(
    "config",
    [
        dict(block_size=16, n_global=2, n_random_blocks=2),
        dict(block_size=16, n_global=3, mode="etc", n_random_blocks=1, seed=5),
    ],
    ids=["itc", "etc"],
)
def test_bigbird_conformance(config):
    # block 16 does not divide the suite's lengths (24, 19, 13): internal padding is exercised
    report = check_mixer(lambda: mixers.get("bigbird", 32, **config), long_len=16384)
    assert "padding/bfloat16" in report.passed and "backends/bfloat16" in report.passed


def test_small_blocks_conformance():
    config = dict(block_size=4, n_global=2, n_random_blocks=2, position="none")
    check_mixer(lambda: mixers.get("bigbird", 32, **config), long_len=512)


def allowed_keys(m, t: int, h: int, i: int) -> list[int]:
    """Keys of query i in head h, from BigBird's rule and the mixer's random-block table."""
    c = m.config
    rand = m.random_blocks(t)[0, h]
    blk = c.block_size
    keys = []
    for j in range(t):
        near = abs(i // blk - j // blk) <= c.window_blocks
        glob = i < c.n_global or j < c.n_global
        if near or glob or bool(rand[i // blk, j // blk]):
            keys.append(j)
    return keys


def test_itc_matches_explicit_per_token_computation():
    torch.manual_seed(0)
    m = mixers.get("bigbird", 16, n_heads=2, block_size=3, n_global=2, n_random_blocks=2, seed=4, position="none")
    t = 23
    x = torch.randn(1, t, 16)
    q, (k, v) = x[0] @ m.q_proj.weight.T, (x[0] @ m.kv_proj.weight.T).chunk(2, -1)
    out = torch.zeros(t, 16)
    for h in range(2):
        sl = slice(8 * h, 8 * h + 8)
        for i in range(t):
            keys = allowed_keys(m, t, h, i)
            out[i, sl] = torch.softmax(k[keys, sl] @ q[i, sl] / math.sqrt(8), 0) @ v[keys, sl]
    expected = out @ m.out_proj.weight.T
    for backend in ("reference", "blocked"):
        with m.use_backend(backend):
            y, _ = m(x)
        torch.testing.assert_close(y[0], expected, rtol=1e-4, atol=1e-5)


def test_random_blocks_add_keys_outside_window_and_globals():
    m = mixers.get("bigbird", 32, block_size=4, n_global=4, window_blocks=1, n_random_blocks=2, seed=1)
    rand = m.random_blocks(64)[0]  # (H, 16, 16)
    i, j = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    assert not (rand & (((i - j).abs() <= 1) | (j == 0) | (i == 0))).any()
    assert (rand[:, 1:].sum(-1) == 2).all()


def dependency(m, x):
    x = x.clone().requires_grad_(True)
    y, _ = m(x)
    rows = []
    for t in range(x.shape[1]):
        (g,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        rows.append(g[0].abs().sum(-1) > 0)
    return torch.stack(rows)


def test_itc_global_tokens_reach_every_position_and_the_pattern_is_exact():
    torch.manual_seed(0)
    m = mixers.get("bigbird", 16, n_heads=2, block_size=4, n_global=2, n_random_blocks=1, seed=2)
    t = 40
    dep = dependency(m, torch.randn(1, t, 16))
    assert dep[:, :2].all(), "an output has no gradient from a global input"
    expected = torch.zeros(t, t, dtype=torch.bool)
    for h in range(2):
        for i in range(t):
            expected[i, allowed_keys(m, t, h, i)] = True
    assert torch.equal(dep, expected)


def test_etc_global_tokens_reach_every_position():
    torch.manual_seed(0)
    m = mixers.get("bigbird", 16, n_heads=2, block_size=4, n_global=3, mode="etc", n_random_blocks=1)
    y, _ = m(torch.randn(1, 30, 16))
    for t in range(30):
        (g,) = torch.autograd.grad(y[0, t].sum(), m.global_embed, retain_graph=True)
        assert (g.abs().sum(-1) > 0).all(), f"output {t} does not see every extra global token"


def test_same_seed_same_random_blocks():
    torch.manual_seed(0)
    a = mixers.get("bigbird", 32, block_size=4, seed=11)
    torch.manual_seed(1)  # other weights, same seed: the same blocks
    b = mixers.get("bigbird", 32, block_size=4, seed=11)
    c = mixers.get("bigbird", 32, block_size=4, seed=12)
    assert torch.equal(a.random_blocks(128), b.random_blocks(128))
    assert not torch.equal(a.random_blocks(128), c.random_blocks(128))
    x = torch.randn(2, 50, 32)
    torch.testing.assert_close(a(x)[0], a(x)[0], rtol=0, atol=0)


def test_config_round_trips():
    config = mixers.make_config("bigbird", 32, mode="etc", n_global=4, seed=3)
    assert BigBirdConfig.from_dict(config.to_dict()) == config


def test_bad_configs_say_what_was_expected():
    with pytest.raises(ConfigError, match="mode must be one of"):
        mixers.get("bigbird", 32, mode="both")
    with pytest.raises(ConfigError, match="n_random_blocks must be an int >= 0"):
        mixers.get("bigbird", 32, n_random_blocks=-1)
    with pytest.raises(ConfigError, match="block_size must be an int >= 1"):
        mixers.get("bigbird", 32, block_size=0)
    # fewer tokens than n_global: every token is global (full attention), not an error
    m = mixers.get("bigbird", 32, n_global=16)
    y, _ = m(torch.randn(1, 5, 32))
    assert torch.isfinite(y).all()
