"""Sparse attention on PyTorch ``flex_attention`` with a block mask built from the pattern.

The ``BlockMask`` is built directly from the pattern's tile layout
(:func:`~longarena.ops.attention.patterns.block_layout`), never by evaluating the mask over
all ``Tq * Tk`` pairs (``create_block_mask`` does that and takes 12 s at T = 16k on CPU).
Tiles the pattern fills completely are marked *full*, so the kernel skips ``mask_mod`` there.

What flex_attention does in torch 2.13 (measured, B=1, H=4, K=16, window 128, one
CPU thread):

- GPU, compiled: forward and backward; the fast path there.
- CPU, compiled: forward only, 0.16 s CPU time at T = 16k vs 1.3 s for dense SDPA
  (``benchmarks/sparse_scaling.py``); its backward raises ``NotImplementedError`` and the
  first call at each shape compiles for 10-40 s.
- CPU, eager: materialises all ``T * T`` scores (70 s wall at T = 16k): never useful.

So training on CPU goes through :mod:`.blocked` instead; this path serves GPU training and
long-sequence inference on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from longarena.ops.attention.patterns import Geometry, Pattern, block_layout
from longarena.ops.attention.sparse_reference import ScoreBias, check_qkv

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

#: tile edge for flex kernels (the kernels' default sparse block)
DEFAULT_BLOCK = 128


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_supports_grad(device: torch.device) -> bool:
    """Whether flex_attention has a backward on ``device`` (not on CPU in torch 2.13)."""
    return torch.device(device).type == "cuda"


def pattern_block_mask(pattern: Pattern, geometry: Geometry, block_size: int = DEFAULT_BLOCK) -> BlockMask:
    """The flex_attention ``BlockMask`` of ``pattern`` at ``geometry``'s lengths.

    Lengths are rounded up to a multiple of ``block_size``: run flex on inputs padded to
    them. The ``mask_mod`` also masks keys past ``kv_len`` and those ``key_mask`` marks as
    padding; tiles the pattern fills with real keys are *full* (no ``mask_mod`` call).
    """
    from torch.nn.attention.flex_attention import BlockMask

    c = block_size
    n_q, n_k = math.ceil(geometry.q_len / c), math.ceil(geometry.kv_len / c)
    geo = dataclasses.replace(geometry, q_cap=n_q * c, kv_cap=n_k * c)
    bound = pattern.bind(geo)
    layout = block_layout(bound, c)

    def as_kv_blocks(tiles: Tensor) -> tuple[Tensor, Tensor]:
        tiles = tiles.expand(-1, -1, n_q, n_k)
        order = torch.sort((~tiles).to(torch.uint8), dim=-1, stable=True).indices
        return tiles.sum(-1).to(torch.int32).contiguous(), order.to(torch.int32).contiguous()

    key_valid = geo.key_mask
    if key_valid is None:
        key_valid = torch.ones(1, geo.kv_len, dtype=torch.bool, device=geo.device)
    key_valid = F.pad(key_valid, (0, n_k * c - geo.kv_len))  # (B|1, nKb*C)
    batch_of = (lambda bi: bi) if key_valid.shape[0] > 1 else (lambda bi: bi * 0)

    def mask_mod(bi: Tensor, hi: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
        return bound.allowed(bi, hi, qi, ki) & key_valid[batch_of(bi), ki]

    kv_num, kv_idx = as_kv_blocks(layout.any & ~layout.full)
    full_num, full_idx = as_kv_blocks(layout.full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=c, mask_mod=mask_mod, seq_lengths=(n_q * c, n_k * c)
    )


def flex_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: Pattern,
    *,
    key_mask: Tensor | None = None,
    score_bias: ScoreBias | None = None,
    scale: float | None = None,
    q_offset: int | None = None,
    block_size: int = DEFAULT_BLOCK,
    compiled: bool = True,
) -> Tensor:
    """Same contract as :func:`~longarena.ops.attention.sparse_reference.sparse_attention_reference`.

    ``compiled=False`` runs flex's eager implementation (dense inside; for tests of the
    mask/score functions only). Raises RuntimeError if gradients are needed on a device
    where flex_attention has no backward.
    """
    from torch.nn.attention.flex_attention import flex_attention

    check_qkv(q, k, v, key_mask)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if needs_grad and not flex_supports_grad(q.device):
        raise RuntimeError(
            f"flex_attention has no backward on {q.device.type} in torch {torch.__version__}; "
            "use the 'blocked' backend to train there, or run under torch.no_grad()"
        )
    h, tq = q.shape[1], q.shape[2]
    hkv, tk = k.shape[1], k.shape[2]
    c = block_size
    n_q, n_k = math.ceil(tq / c), math.ceil(tk / c)
    offset = tk - tq if q_offset is None else q_offset
    block_mask = pattern_block_mask(pattern, Geometry(tq, tk, offset, h, key_mask, q.device), block_size=c)
    score_mod = None
    if score_bias is not None:

        def score_mod(score: Tensor, bi: Tensor, hi: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
            return score + score_bias(bi, hi, qi, ki).to(score.dtype)

    qp = F.pad(q, (0, 0, 0, n_q * c - tq))  # (B, H, nQb*C, K)
    kp = F.pad(k, (0, 0, 0, n_k * c - tk))  # (B, Hkv, nKb*C, K)
    vp = F.pad(v, (0, 0, 0, n_k * c - tk))
    fn = _compiled_flex() if compiled else flex_attention
    out = fn(qp, kp, vp, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=h != hkv)
    return out[:, :, :tq]
