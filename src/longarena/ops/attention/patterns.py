"""Sparse attention patterns: which (query, key) pairs may attend, in three forms.

A :class:`Pattern` is a rule independent of sequence length. ``pattern.bind(geometry)``
fixes the lengths (and the padding of keys, which seeded random blocks avoid) and gives a
:class:`BoundPattern` that answers the same question three ways:

- ``allowed(b, h, q, k)``: elementwise on broadcastable integer tensors. With 0-d
  tensors it is a flex_attention ``mask_mod``; with ``arange`` grids it builds the dense
  ``(B, H, Tq, Tk)`` boolean mask of the reference (:func:`dense_mask`).
- ``blocks(grid, exclude_dense_rows)``: which ``(query block, key block)`` tiles hold any
  allowed pair, and which hold only allowed pairs; the block-sparse kernels skip the rest,
  so cost follows the pattern, not ``Tq * Tk``.
- ``dense_queries``: query rows that attend (almost) everywhere (global tokens). The
  gather kernel computes those rows densely on their own, so one global token does not make
  every query block gather every key block.

Query indices are local to the query chunk (``0 .. Tq-1``); a chunk that continues a KV
cache sits ``q_offset`` positions after the first cached key (``q_offset = Tk - Tq``).
Patterns compose: ``a | b`` allows a pair either allows, ``a & b`` a pair both allow.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

#: ``(b, h, q, k) -> bool tensor`` on broadcastable integer tensors
MaskFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
#: ``(grid, exclude_dense_rows) -> (any, full)``, each ``(B|1, H|1, nQb, nKb)`` bool
BlocksFn = Callable[["BlockGrid", bool], tuple[Tensor, Tensor]]


@dataclasses.dataclass
class Geometry:
    """Lengths a pattern is bound to.

    ``q_len``/``kv_len`` are the real lengths; ``q_cap``/``kv_cap`` (>= them) are the
    lengths padded to a block multiple, so lookup tables cover every index a kernel may
    ask about. ``key_mask: (B, Tk)`` bool marks real keys (None: all real).
    """

    q_len: int
    kv_len: int
    q_offset: int = 0
    n_heads: int = 1
    key_mask: Tensor | None = None
    device: torch.device | str | None = None
    q_cap: int | None = None
    kv_cap: int | None = None

    def __post_init__(self) -> None:
        self.q_cap = max(self.q_cap or 0, self.q_len)
        self.kv_cap = max(self.kv_cap or 0, self.kv_len)
        if self.key_mask is not None:
            self.device = self.key_mask.device
        self.device = torch.device(self.device or "cpu")

    @property
    def batch(self) -> int:
        return 1 if self.key_mask is None else self.key_mask.shape[0]

    @property
    def positions(self) -> int:
        """Number of absolute positions a query or key index may refer to."""
        return max(self.q_offset + self.q_cap, self.kv_cap)


@dataclasses.dataclass
class BlockGrid:
    """Tiles of ``block`` queries x ``block`` keys; ranges are absolute positions, inclusive.

    q_lo/q_hi: (nQb, 1); k_lo/k_hi: (1, nKb). Only real positions count (the last block of
    a length that the block size does not divide is partly padding).
    """

    block: int
    q_lo: Tensor
    q_hi: Tensor
    k_lo: Tensor
    k_hi: Tensor
    k_whole: Tensor  # (1, nKb) bool: the key block holds no padding past kv_len

    @classmethod
    def make(cls, geo: Geometry, block: int) -> BlockGrid:
        n_q, n_k = math.ceil(geo.q_len / block), math.ceil(geo.kv_len / block)
        qs = torch.arange(n_q, device=geo.device) * block
        ks = torch.arange(n_k, device=geo.device) * block
        q_lo = (qs + geo.q_offset)[:, None]
        q_hi = (torch.clamp(qs + block, max=geo.q_len) - 1 + geo.q_offset)[:, None]
        k_lo = ks[None, :]
        k_hi = torch.clamp(ks + block, max=geo.kv_len)[None, :] - 1
        return cls(block, q_lo, q_hi, k_lo, k_hi, (ks + block <= geo.kv_len)[None, :])

    @property
    def shape(self) -> tuple[int, int]:
        return self.q_lo.shape[0], self.k_lo.shape[1]


@dataclasses.dataclass
class BoundPattern:
    """A pattern at fixed lengths (see the module docstring for the three forms)."""

    geometry: Geometry
    allowed: MaskFn
    blocks_fn: BlocksFn
    #: (Tq,) bool: rows to compute densely in gather kernels, or None
    dense_queries: Tensor | None = None

    def blocks(self, grid: BlockGrid, exclude_dense_rows: bool = False) -> tuple[Tensor, Tensor]:
        """``(any, full)`` per tile, each ``(B|1, H|1, nQb, nKb)`` bool (``full`` implies ``any``)."""
        any_, full = self.blocks_fn(grid, exclude_dense_rows)
        return _as4d(any_), _as4d(full & any_)


class Pattern:
    """A length-independent rule of allowed (query, key) pairs; compose with ``|`` and ``&``."""

    def bind(self, geo: Geometry) -> BoundPattern:
        raise NotImplementedError

    def __or__(self, other: Pattern) -> Pattern:
        return Union((self, other))

    def __and__(self, other: Pattern) -> Pattern:
        return Intersection((self, other))


def _as4d(t: Tensor) -> Tensor:
    while t.dim() < 4:
        t = t.unsqueeze(0)
    return t


def _pick(index: Tensor, size: int) -> Tensor:
    """Index into a table dimension of ``size``; size 1 broadcasts over every index."""
    return index if size > 1 else index * 0


def _check_heads(name: str, per_head: int, geo: Geometry) -> None:
    if per_head > 1 and per_head != geo.n_heads:
        raise ValueError(f"{name} is defined for {per_head} heads but the attention has {geo.n_heads} heads")


@dataclasses.dataclass(frozen=True)
class SlidingWindow(Pattern):
    """Keys within ``window`` positions (one side) of the query, every ``dilation``-th one.

    Symmetric: ``|q - k| <= window * d`` and ``(q - k) % d == 0``; causal: ``0 <= q - k``
    as well, so a query sees itself and ``window`` earlier keys. ``dilation`` is one int or
    one per head (Longformer gives heads different dilations to widen the receptive field).
    """

    window: int
    causal: bool = False
    dilation: int | tuple[int, ...] = 1

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 0:
            raise ValueError(f"window must be an int >= 0 (keys on one side), got {self.window!r}")
        dil = (self.dilation,) if isinstance(self.dilation, int) else tuple(self.dilation)
        if not dil or any(not isinstance(d, int) or d < 1 for d in dil):
            raise ValueError(
                f"dilation must be an int >= 1 or a tuple of them (one per head), got {self.dilation!r}"
            )

    @property
    def dilations(self) -> tuple[int, ...]:
        return (self.dilation,) if isinstance(self.dilation, int) else tuple(self.dilation)

    @property
    def span(self) -> int:
        """Farthest key from its query, over heads."""
        return self.window * max(self.dilations)

    def bind(self, geo: Geometry) -> BoundPattern:
        _check_heads("SlidingWindow dilation", len(self.dilations), geo)
        dil = torch.tensor(self.dilations, device=geo.device)  # (Hd,)
        w, off, causal = self.window, geo.q_offset, self.causal

        undilated = max(self.dilations) == 1

        def allowed(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            rel = q + off - k
            if undilated:  # the common case, without the per-head table and the remainder
                return (rel <= w) & (rel >= 0 if causal else rel >= -w)
            d = dil[_pick(h, dil.numel())]
            inside = (rel <= w * d) & (rel >= 0 if causal else rel >= -w * d)
            return inside & (torch.remainder(rel, d) == 0)

        def blocks(grid: BlockGrid, exclude_dense_rows: bool) -> tuple[Tensor, Tensor]:
            d = dil.view(-1, 1, 1)  # (Hd, 1, 1)
            lo_rel, hi_rel = grid.q_lo - grid.k_hi, grid.q_hi - grid.k_lo  # (nQb, nKb)
            lower = torch.zeros_like(d) if causal else -w * d
            upper = w * d
            lo, hi = torch.maximum(lo_rel, lower), torch.minimum(hi_rel, upper)
            # a tile holds an allowed pair iff some multiple of d lies in [lo, hi]
            any_ = (lo <= hi) & (torch.div(hi, d, rounding_mode="floor") * d >= lo)
            full = (d == 1) & (lo_rel >= lower) & (hi_rel <= upper)
            return any_.unsqueeze(0), full.unsqueeze(0)

        return BoundPattern(geo, allowed, blocks)


@dataclasses.dataclass(frozen=True)
class Causal(Pattern):
    """Keys at or before the query's position."""

    def bind(self, geo: Geometry) -> BoundPattern:
        off = geo.q_offset

        def allowed(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return k <= q + off

        def blocks(grid: BlockGrid, exclude_dense_rows: bool) -> tuple[Tensor, Tensor]:
            return grid.q_hi >= grid.k_lo, grid.q_lo >= grid.k_hi

        return BoundPattern(geo, allowed, blocks)


@dataclasses.dataclass(frozen=True)
class KeyRange(Pattern):
    """Every query may attend keys ``start <= k < stop`` (``stop=None``: to the end).

    Used to address key segments appended to the sequence, such as LongT5's transient
    global tokens after the ``T`` token keys.
    """

    start: int = 0
    stop: int | None = None

    def bind(self, geo: Geometry) -> BoundPattern:
        start, stop = self.start, geo.kv_cap if self.stop is None else self.stop

        def allowed(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return (k >= start) & (k < stop)

        def blocks(grid: BlockGrid, exclude_dense_rows: bool) -> tuple[Tensor, Tensor]:
            ones = torch.ones_like(grid.q_lo, dtype=torch.bool)
            touches = ones & (grid.k_hi >= start) & (grid.k_lo < stop)
            return touches, ones & (grid.k_lo >= start) & (grid.k_hi < stop)

        return BoundPattern(geo, allowed, blocks)


@dataclasses.dataclass(frozen=True)
class GlobalTokens(Pattern):
    """Tokens at ``indices`` attend to every key and every query attends to them."""

    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        bad = [i for i in self.indices if not isinstance(i, int) or i < 0]
        if bad:
            raise ValueError(f"global token indices must be ints >= 0, got {bad}")

    def bind(self, geo: Geometry) -> BoundPattern:
        length = max(geo.q_offset + geo.q_len, geo.kv_len)
        out = [i for i in self.indices if i >= length]
        if out:
            raise ValueError(
                f"global token indices {out} are out of range for a sequence of {length} positions"
            )
        table = torch.zeros(geo.positions + 1, dtype=torch.bool, device=geo.device)
        table[list(self.indices)] = True
        # prefix counts answer "how many global tokens in [lo, hi]" for a whole tile at once
        counts = torch.nn.functional.pad(table.long().cumsum(0), (1, 0))
        off = geo.q_offset

        def allowed(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return table[q + off] | table[k]

        def blocks(grid: BlockGrid, exclude_dense_rows: bool) -> tuple[Tensor, Tensor]:
            in_k = counts[grid.k_hi + 1] - counts[grid.k_lo]  # (1, nKb)
            all_k = in_k == grid.k_hi - grid.k_lo + 1
            if exclude_dense_rows:
                any_q = all_q = torch.zeros_like(grid.q_lo, dtype=torch.bool)
            else:
                in_q = counts[grid.q_hi + 1] - counts[grid.q_lo]  # (nQb, 1)
                any_q, all_q = in_q > 0, in_q == grid.q_hi - grid.q_lo + 1
            return any_q | (in_k > 0), all_q | all_k

        rows = table[off : off + geo.q_len]
        return BoundPattern(geo, allowed, blocks, dense_queries=rows if bool(rows.any()) else None)


@dataclasses.dataclass(frozen=True)
class BlockLocal(Pattern):
    """Queries attend keys of blocks within ``radius`` blocks of their own (``radius=0``:
    their own block only). BigBird's sliding window is this with ``radius=1``."""

    block: int
    radius: int = 0

    def __post_init__(self) -> None:
        if self.block < 1 or self.radius < 0:
            raise ValueError(f"BlockLocal needs block >= 1 and radius >= 0, got {self.block}, {self.radius}")

    def bind(self, geo: Geometry) -> BoundPattern:
        size, r, off = self.block, self.radius, geo.q_offset

        def allowed(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return ((q + off) // size - k // size).abs() <= r

        def blocks(grid: BlockGrid, exclude_dense_rows: bool) -> tuple[Tensor, Tensor]:
            qa, qb = grid.q_lo // size, grid.q_hi // size
            ka, kb = grid.k_lo // size, grid.k_hi // size
            any_ = (qb >= ka - r) & (qa <= kb + r)
            full = torch.maximum(qb - ka, kb - qa) <= r
            return any_, full

        return BoundPattern(geo, allowed, blocks)


def block_hash(seed: int, head: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """A deterministic pseudo-random int in [0, 2**31) per (seed, head, i, j).

    A counter-based hash, not a generator stream: block ``(i, j)`` gets the same number
    whatever the sequence length, so a padded sequence and its unpadded copy pick the same
    random blocks. Integer-only (31-bit products never overflow int64): equal on every device.
    """
    mask = (1 << 31) - 1
    x = (head * 0x2C1B3C6D + i * 0x297A2D39 + j * 0x6A09E667 + seed * 0x1B873593) & mask
    for mult in (0x5BD1E995, 0x27D4EB2F, 0x165667B1):
        x = ((x ^ (x >> 15)) * mult) & mask
    return x ^ (x >> 13)


@dataclasses.dataclass(frozen=True)
class RandomBlocks(Pattern):
    """Each query block attends ``n_random`` key blocks chosen pseudo-randomly (BigBird).

    The choice is a pure function of ``(seed, head, query block, key block)`` (see
    :func:`block_hash`): the same seed gives the same blocks. Candidates are key blocks that
    hold at least one real key and that ``avoid`` does not already reach from the query
    block (BigBird picks random blocks outside the window and the global blocks), so random
    attention always adds new keys. ``n_heads > 1`` draws a different choice per head.
    """

    block: int
    n_random: int
    seed: int = 0
    n_heads: int = 1
    avoid: Pattern | None = None

    def __post_init__(self) -> None:
        if self.block < 1 or self.n_random < 0 or self.n_heads < 1:
            raise ValueError(
                "RandomBlocks needs block >= 1, n_random >= 0, n_heads >= 1; "
                f"got {self.block}, {self.n_random}, {self.n_heads}"
            )

    def table(self, geo: Geometry) -> Tensor:
        """(B|1, H|1, nQr, nKr) bool: the chosen key blocks of each query block."""
        _check_heads("RandomBlocks", self.n_heads, geo)
        size = self.block
        n_q = math.ceil((geo.q_offset + geo.q_cap) / size)
        n_k = math.ceil(geo.kv_cap / size)
        dev = geo.device
        head = torch.arange(self.n_heads, device=dev).view(-1, 1, 1)
        i = torch.arange(n_q, device=dev).view(1, -1, 1)
        j = torch.arange(n_k, device=dev).view(1, 1, -1)
        # the key block index in the low bits breaks ties, so topk picks the same on any device
        score = ((block_hash(self.seed, head, i, j) << 20) + j).unsqueeze(0)  # (1, Hr, nQr, nKr)
        real = torch.ones(1, geo.kv_len, dtype=torch.bool, device=dev) if geo.key_mask is None else geo.key_mask
        real = torch.nn.functional.pad(real, (0, n_k * size - geo.kv_len))
        real = real.view(real.shape[0], n_k, size).any(-1)  # (B|1, nKr): blocks with a real key
        candidate = real[:, None, None, :]  # (B|1, 1, 1, nKr)
        if self.avoid is not None:
            # bound at offset 0 over absolute positions, so tile i is random block i
            coarse = Geometry(n_q * size, n_k * size, 0, geo.n_heads, None, dev)
            reached, _ = self.avoid.bind(coarse).blocks(BlockGrid.make(coarse, size))
            candidate = candidate & ~reached
        score = torch.where(candidate, score, torch.full_like(score, -1))
        k = min(self.n_random, n_k)
        top, where = score.topk(k, dim=-1) if k else (score[..., :0], score[..., :0])
        chosen = torch.zeros(score.shape, dtype=torch.bool, device=dev)
        return chosen.scatter(-1, where, top >= 0)

    def bind(self, geo: Geometry) -> BoundPattern:
        table = self.table(geo)  # (Bt, Ht, nQr, nKr)
        size, off = self.block, geo.q_offset
        bt, ht, nq, nk = table.shape
        prefix = torch.nn.functional.pad(table.long().cumsum(-1).cumsum(-2), (1, 0, 1, 0))
        flat = table.flatten()

        def allowed(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            # one flat gather: several times faster than 4-d advanced indexing on big grids
            row = (_pick(b, bt) * ht + _pick(h, ht)) * nq + (q + off) // size
            return flat[row * nk + k // size]

        def blocks(grid: BlockGrid, exclude_dense_rows: bool) -> tuple[Tensor, Tensor]:
            # count chosen cells in the rectangle of random blocks each tile touches
            i0, i1 = grid.q_lo // size, grid.q_hi // size + 1
            j0, j1 = grid.k_lo // size, grid.k_hi // size + 1
            hits = prefix[..., i1, j1] - prefix[..., i0, j1] - prefix[..., i1, j0] + prefix[..., i0, j0]
            return hits > 0, hits == (i1 - i0) * (j1 - j0)

        return BoundPattern(geo, allowed, blocks)


@dataclasses.dataclass(frozen=True)
class Union(Pattern):
    """A pair is allowed if any part allows it."""

    parts: tuple[Pattern, ...]

    def __or__(self, other: Pattern) -> Pattern:
        return Union((*self.parts, other))

    def bind(self, geo: Geometry) -> BoundPattern:
        bound = [p.bind(geo) for p in self.parts]

        def allowed(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            out = bound[0].allowed(b, h, q, k)
            for p in bound[1:]:
                out = out | p.allowed(b, h, q, k)
            return out

        def blocks(grid: BlockGrid, exclude_dense_rows: bool) -> tuple[Tensor, Tensor]:
            pairs = [p.blocks(grid, exclude_dense_rows) for p in bound]
            any_, full = pairs[0]
            for a, f in pairs[1:]:
                any_, full = any_ | a, full | f
            return any_, full

        return BoundPattern(geo, allowed, blocks, _any_rows(bound))


@dataclasses.dataclass(frozen=True)
class Intersection(Pattern):
    """A pair is allowed if every part allows it."""

    parts: tuple[Pattern, ...]

    def __and__(self, other: Pattern) -> Pattern:
        return Intersection((*self.parts, other))

    def bind(self, geo: Geometry) -> BoundPattern:
        bound = [p.bind(geo) for p in self.parts]

        def allowed(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            out = bound[0].allowed(b, h, q, k)
            for p in bound[1:]:
                out = out & p.allowed(b, h, q, k)
            return out

        def blocks(grid: BlockGrid, exclude_dense_rows: bool) -> tuple[Tensor, Tensor]:
            # the AND of "any" over-approximates (safe: the kernel still applies the mask)
            pairs = [p.blocks(grid, exclude_dense_rows) for p in bound]
            any_, full = pairs[0]
            for a, f in pairs[1:]:
                any_, full = any_ & a, full & f
            return any_, full

        return BoundPattern(geo, allowed, blocks, _any_rows(bound))


def _any_rows(bound: Sequence[BoundPattern]) -> Tensor | None:
    # dense rows are only a work split: computing a row densely is right whatever its mask
    rows = [p.dense_queries for p in bound if p.dense_queries is not None]
    if not rows:
        return None
    out = rows[0]
    for r in rows[1:]:
        out = out | r
    return out


def dense_mask(bound: BoundPattern) -> Tensor:
    """The ``(B|1, H|1, Tq, Tk)`` boolean mask of a bound pattern (True = may attend).

    Key padding (``geometry.key_mask``) is applied too. O(Tq * Tk) memory: for references
    and pictures.
    """
    geo = bound.geometry
    dev = geo.device
    b = torch.arange(geo.batch, device=dev).view(-1, 1, 1, 1)
    h = torch.arange(geo.n_heads, device=dev).view(1, -1, 1, 1)
    q = torch.arange(geo.q_len, device=dev).view(1, 1, -1, 1)
    k = torch.arange(geo.kv_len, device=dev).view(1, 1, 1, -1)
    mask = _as4d(bound.allowed(b, h, q, k))
    if geo.key_mask is not None:
        mask = mask & geo.key_mask[:, None, None, :]
    return mask


@dataclasses.dataclass
class BlockLayout:
    """Block-sparse layout of a bound pattern: key blocks per query block.

    indices: (B|1, H|1, nQb, M) key-block indices (the first ``counts`` are used);
    counts: (B|1, H|1, nQb); full: (B|1, H|1, nQb, nKb) tiles needing no mask at all.
    """

    block: int
    any: Tensor
    full: Tensor
    indices: Tensor
    counts: Tensor


def block_layout(bound: BoundPattern, block: int, *, exclude_dense_rows: bool = False) -> BlockLayout:
    """Tiles of a bound pattern that hold allowed pairs, honouring key padding.

    A tile is *full* only if all of its keys are real (not padding past ``kv_len``, not
    masked by ``key_mask``), so a kernel may skip the mask there.
    """
    geo = bound.geometry
    grid = BlockGrid.make(geo, block)
    any_, full = bound.blocks(grid, exclude_dense_rows)
    n_k = grid.shape[1]
    full = full & grid.k_whole
    if geo.key_mask is not None:
        km = torch.nn.functional.pad(geo.key_mask, (0, n_k * block - geo.kv_len)).view(geo.batch, n_k, block)
        any_ = any_ & km.any(-1)[:, None, None, :]
        full = full & km.all(-1)[:, None, None, :]
    counts = any_.sum(-1)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    # stable sort puts the selected key blocks first, in increasing order
    indices = torch.sort((~any_).to(torch.uint8), dim=-1, stable=True).indices[..., :width]
    return BlockLayout(block, any_, full, indices, counts)
