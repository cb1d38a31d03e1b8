"""Sparse attention patterns and kernels: masks against explicit loops, tile layouts against
the dense mask, every backend against the dense reference (outputs and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from longarena.ops.attention.patterns import (
    BlockLocal,
    Causal,
    Geometry,
    GlobalTokens,
    KeyRange,
    RandomBlocks,
    SlidingWindow,
    block_layout,
    dense_mask,
)
from longarena.ops.attention.flex import pattern_block_mask
from longarena.ops.attention.sparse import sparse_attention
from longarena.testing.conformance import rel_error


def explicit_mask(rule, heads: int, tq: int, tk: int, offset: int = 0) -> torch.Tensor:
    """(H, Tq, Tk) from a Python predicate on (head, absolute query position, key)."""
    out = torch.zeros(heads, tq, tk, dtype=torch.bool)
    for h in range(heads):
        for i in range(tq):
            for j in range(tk):
                out[h, i, j] = rule(h, i + offset, j)
    return out


def bound_dense(pattern, tq, tk, offset=0, heads=1, key_mask=None):
    return dense_mask(pattern.bind(Geometry(tq, tk, offset, heads, key_mask)))


@pytest.mark.parametrize("offset", [0, 5])
def test_primitive_masks_match_explicit_rules(offset):
    tq, tk = 13, 13 + offset
    dil = (1, 2, 3)
    cases = [
        (SlidingWindow(2), 1, lambda h, q, k: abs(q - k) <= 2),
        (SlidingWindow(3, causal=True), 1, lambda h, q, k: 0 <= q - k <= 3),
        (SlidingWindow(2, dilation=dil), 3, lambda h, q, k: abs(q - k) <= 2 * dil[h] and (q - k) % dil[h] == 0),
        (
            SlidingWindow(2, causal=True, dilation=dil),
            3,
            lambda h, q, k: 0 <= q - k <= 2 * dil[h] and (q - k) % dil[h] == 0,
        ),
        (Causal(), 1, lambda h, q, k: k <= q),
        (GlobalTokens((1, 7)), 1, lambda h, q, k: q in (1, 7) or k in (1, 7)),
        (BlockLocal(4), 1, lambda h, q, k: q // 4 == k // 4),
        (BlockLocal(3, radius=1), 1, lambda h, q, k: abs(q // 3 - k // 3) <= 1),
        (KeyRange(4, 9), 1, lambda h, q, k: 4 <= k < 9),
        (SlidingWindow(1) | GlobalTokens((0,)), 1, lambda h, q, k: abs(q - k) <= 1 or q == 0 or k == 0),
        (SlidingWindow(4) & Causal(), 1, lambda h, q, k: 0 <= q - k <= 4),
    ]
    for pattern, heads, rule in cases:
        got = bound_dense(pattern, tq, tk, offset, heads)[0]
        expected = explicit_mask(rule, heads, tq, tk, offset)
        assert torch.equal(got.expand_as(expected), expected), pattern


def test_random_blocks_mask_expands_its_table():
    pattern = RandomBlocks(4, 2, seed=3, n_heads=2)
    geo = Geometry(18, 18, 0, 2)
    table = pattern.table(geo)[0]  # (H, nQr, nKr)
    mask = bound_dense(pattern, 18, 18, heads=2)[0]
    expected = explicit_mask(lambda h, q, k: bool(table[h, q // 4, k // 4]), 2, 18, 18)
    assert torch.equal(mask, expected)
    assert (table.sum(-1) == 2).all()  # every query block gets exactly n_random blocks


BIGBIRD_LOCAL = BlockLocal(8, 1) | GlobalTokens((0, 1))
PATTERNS = {
    "window": SlidingWindow(5),
    "causal-window": SlidingWindow(6, causal=True),
    "dilated": SlidingWindow(3, dilation=(1, 2, 3, 4)),
    "longformer": SlidingWindow(4) | GlobalTokens((0, 9)),
    "bigbird": BIGBIRD_LOCAL | RandomBlocks(8, 2, seed=3, n_heads=4, avoid=BIGBIRD_LOCAL),
    "block-local": BlockLocal(16),
    "global-causal": (SlidingWindow(10) | GlobalTokens((3,))) & Causal(),
    "key-segments": (SlidingWindow(4) & KeyRange(0, 60)) | KeyRange(60),
}


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("block", [8, 16])
def test_tile_layout_covers_the_dense_mask(name, block):
    """Every tile with an allowed pair is kept; a tile marked full holds only allowed pairs."""
    tq, tk = 70, 75
    key_mask = torch.ones(2, tk, dtype=torch.bool)
    key_mask[1, 50:] = False
    bound = PATTERNS[name].bind(Geometry(tq, tk, tk - tq, 4, key_mask, q_cap=80, kv_cap=80))
    layout = block_layout(bound, block)
    mask = dense_mask(bound).expand(2, 4, tq, tk)
    padded = torch.zeros(2, 4, math.ceil(tq / block) * block, math.ceil(tk / block) * block, dtype=torch.bool)
    padded[..., :tq, :tk] = mask
    tiles = padded.unflatten(2, (-1, block)).unflatten(4, (-1, block))  # (B, H, nQb, C, nKb, C)
    has_any = tiles.any(5).any(3)
    padded[..., tq:, :tk] = True  # padded query rows are dropped: any key is fine for them
    has_all = tiles.all(5).all(3)
    any_, full = layout.any.expand_as(has_any), layout.full.expand_as(has_any)
    assert (has_any <= any_).all(), "a tile holding allowed pairs was dropped"
    assert (full <= has_all).all(), "a tile marked full holds masked pairs"
    if name not in ("global-causal", "key-segments"):
        # exact, except where intersections or key padding (tracked per tile) over-approximate
        assert torch.equal(any_[0], has_any[0])
    assert torch.equal(layout.counts, layout.any.sum(-1))


def _case(dtype, *, gqa=False, key_mask=True, bias=False):
    g = torch.Generator().manual_seed(0)
    b, h, tq, tk, k_dim = 2, 4, 70, 75, 8
    hkv = 2 if gqa else h
    q = torch.randn(b, h, tq, k_dim, generator=g)
    k = torch.randn(b, hkv, tk, k_dim, generator=g)
    v = torch.randn(b, hkv, tk, k_dim, generator=g)
    km = None
    if key_mask:
        km = torch.ones(b, tk, dtype=torch.bool)
        km[1, 47:] = False
    score_bias = None
    if bias:
        table = torch.randn(h, 9, generator=g)

        def score_bias(bi, hi, qi, ki):
            return table[hi, (qi - ki).abs().clamp(max=8)]

    return [t.to(dtype).requires_grad_(True) for t in (q, k, v)], km, score_bias


@pytest.mark.parametrize("name", list(PATTERNS))
def test_blocked_equals_reference_outputs_and_gradients(name):
    (q, k, v), km, _ = _case(torch.float32, gqa=name == "dilated")
    grads = []
    for backend, block in [("reference", None), ("blocked", 16), ("blocked", 32)]:
        y = sparse_attention(q, k, v, PATTERNS[name], backend=backend, block_size=block, key_mask=km)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        gq, gk, gv = torch.autograd.grad((y * w).sum(), (q, k, v))
        grads.append((y, gq, gk, gv))
    for other in grads[1:]:
        for a, b in zip(other, grads[0]):
            assert rel_error(a, b) < 1e-5


def test_blocked_without_elementwise_mask_when_every_tile_is_full():
    """BigBird with tile = block: every gathered tile is full, so the kernel skips the mask."""
    local = BlockLocal(16, 1) | GlobalTokens(tuple(range(16)))
    pattern = local | RandomBlocks(16, 2, seed=5, n_heads=4, avoid=local)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 96, 8, generator=g).requires_grad_(True) for _ in range(3))
    layout = block_layout(pattern.bind(Geometry(96, 96, 0, 4)), 16, exclude_dense_rows=True)
    assert bool((layout.full | ~layout.any).all())
    ys = [sparse_attention(q, k, v, pattern, backend=be, block_size=16) for be in ("reference", "blocked")]
    grads = [torch.autograd.grad(y.pow(2).sum(), (q, k, v)) for y in ys]
    assert rel_error(ys[1], ys[0]) < 1e-5
    for a, b in zip(grads[1], grads[0]):
        assert rel_error(a, b) < 1e-5


def test_blocked_bf16_and_score_bias_match_the_fp32_reference():
    (q, k, v), km, bias = _case(torch.float32, gqa=True, bias=True)
    pattern = PATTERNS["longformer"]
    ref = sparse_attention(q, k, v, pattern, backend="reference", key_mask=km, score_bias=bias)
    gref = torch.autograd.grad(ref.sum(), (q, k, v))
    y32 = sparse_attention(q, k, v, pattern, backend="blocked", block_size=16, key_mask=km, score_bias=bias)
    assert rel_error(y32, ref) < 1e-5
    qb, kb, vb = (t.detach().bfloat16().requires_grad_(True) for t in (q, k, v))
    y16 = sparse_attention(qb, kb, vb, pattern, backend="blocked", block_size=16, key_mask=km, score_bias=bias)
    assert y16.dtype == torch.bfloat16 and rel_error(y16, ref) < 2e-2
    for a, b in zip(torch.autograd.grad(y16.float().sum(), (qb, kb, vb)), gref):
        assert rel_error(a, b) < 3e-2


def test_rows_with_no_allowed_key_are_zero_with_finite_gradients():
    (q, k, v), _, _ = _case(torch.float32)
    km = torch.zeros(2, 75, dtype=torch.bool)
    km[0, :3] = True  # element 1 has no real key at all
    for backend in ("reference", "blocked"):
        y = sparse_attention(q, k, v, SlidingWindow(2), backend=backend, block_size=16, key_mask=km)
        assert (y[1] == 0).all() and (y[0, :, 10:] == 0).all()
        grads = torch.autograd.grad(y.sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("name", ["dilated", "bigbird", "longformer"])
def test_flex_mask_and_score_mods_match_reference(name):
    """flex_attention's eager path (no compile) checks mask_mod/score_mod and GQA on CPU."""
    (q, k, v), km, bias = _case(torch.float32, gqa=True, bias=True)
    q, k, v = (t.detach() for t in (q, k, v))
    ref = sparse_attention(q, k, v, PATTERNS[name], backend="reference", key_mask=km, score_bias=bias)
    with torch.no_grad():
        y = sparse_attention(
            q, k, v, PATTERNS[name], backend="flex", block_size=16, key_mask=km, score_bias=bias, compiled=False
        )
    assert rel_error(y, ref) < 1e-5


@pytest.mark.slow
def test_compiled_flex_uses_the_tile_layout_correctly_on_cpu():
    """Compiled flex skips tiles (unlike its eager path), so this checks the layout too."""
    (q, k, v), km, bias = _case(torch.float32, bias=True)
    q, k, v = (torch.cat([t.detach()] * 2, dim=-1) for t in (q, k, v))  # K = 16 for the CPU kernel
    ref = sparse_attention(q, k, v, PATTERNS["bigbird"], backend="reference", key_mask=km, score_bias=bias)
    with torch.no_grad():
        y = sparse_attention(
            q, k, v, PATTERNS["bigbird"], backend="flex", block_size=16, key_mask=km, score_bias=bias
        )
    assert rel_error(y, ref) < 1e-5


def test_flex_block_mask_keeps_the_tiles_of_the_layout():
    key_mask = torch.ones(2, 75, dtype=torch.bool)
    key_mask[1, 40:] = False
    geo = Geometry(70, 75, 5, 4, key_mask)
    block_mask = pattern_block_mask(PATTERNS["bigbird"], geo, block_size=16)
    layout = block_layout(PATTERNS["bigbird"].bind(geo), 16)
    assert torch.equal(block_mask.to_dense().bool(), layout.any.expand(2, 4, -1, -1))


def test_flex_refuses_gradients_on_cpu_with_a_clear_error():
    (q, k, v), _, _ = _case(torch.float32)
    with pytest.raises(RuntimeError, match="no backward on cpu.*blocked"):
        sparse_attention(q, k, v, SlidingWindow(2), backend="flex")


def test_random_blocks_are_reproducible_and_seeded():
    geo = Geometry(64, 64, 0, 4)
    a = RandomBlocks(8, 2, seed=7, n_heads=4).table(geo)
    assert torch.equal(a, RandomBlocks(8, 2, seed=7, n_heads=4).table(geo))
    assert not torch.equal(a, RandomBlocks(8, 2, seed=8, n_heads=4).table(geo))
    assert not torch.equal(a[0, 0], a[0, 1])  # heads draw separately


def test_random_blocks_avoid_reached_blocks_and_ignore_padding():
    avoid = BlockLocal(8, 1) | GlobalTokens((0,))
    pattern = RandomBlocks(8, 3, seed=1, n_heads=2, avoid=avoid)
    table = pattern.table(Geometry(80, 80, 0, 2))[0]  # (H, 10, 10)
    i, j = torch.meshgrid(torch.arange(10), torch.arange(10), indexing="ij")
    reached = ((i - j).abs() <= 1) | (j == 0) | (i == 0)
    assert not (table & reached).any()
    # a padded sequence keeps the blocks of its real part, and never picks padding blocks
    key_mask = torch.zeros(1, 80, dtype=torch.bool)
    key_mask[0, :41] = True  # 41 real tokens: key blocks 0..5 hold real keys
    padded = pattern.table(Geometry(80, 80, 0, 2, key_mask))[0]
    short = pattern.table(Geometry(41, 41, 0, 2))[0]
    assert torch.equal(padded[:, :6, :6], short)
    assert not padded[:, :, 6:].any()


def test_bad_patterns_and_geometries_say_what_was_expected():
    with pytest.raises(ValueError, match="window must be an int >= 0"):
        SlidingWindow(-1)
    with pytest.raises(ValueError, match="dilation"):
        SlidingWindow(2, dilation=(1, 0))
    with pytest.raises(ValueError, match="defined for 3 heads but the attention has 4"):
        SlidingWindow(2, dilation=(1, 2, 3)).bind(Geometry(8, 8, 0, 4))
    with pytest.raises(ValueError, match=r"indices \[9\] are out of range for a sequence of 8"):
        GlobalTokens((0, 9)).bind(Geometry(8, 8))
    with pytest.raises(ValueError, match="unknown sparse attention backend"):
        q = torch.randn(1, 1, 4, 2)
        sparse_attention(q, q, q, SlidingWindow(1), backend="dense")


def test_window_larger_than_the_sequence_is_full_attention():
    (q, k, v), km, _ = _case(torch.float32, key_mask=True)
    y = sparse_attention(q, k, v, SlidingWindow(1000), backend="blocked", block_size=16, key_mask=km)
    full = sparse_attention(q, k, v, KeyRange(), backend="reference", key_mask=km)
    assert rel_error(y, full) < 1e-6
