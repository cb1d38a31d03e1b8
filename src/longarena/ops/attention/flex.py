"""Sparse attention on PyTorch ``flex_attention`` with a block mask built from the pattern.

The ``BlockMask`` is built directly from the pattern's tile layout
(:func:`~longarena.ops.attention.patterns.block_layout`), never by evaluating the mask over
all ``Tq * Tk`` pairs (``create_block_mask`` does that and takes 12 s at T = 16k on CPU).
Tiles the pattern fills completely are marked *full*, so the kernel skips ``mask_mod`` there.

What flex_attention does in torch 2.13 (measured, B=1, H=4, K=16, window 128, T=16k, one
CPU core):

- GPU, compiled: forward and backward; the fast path there.
- CPU, compiled: forward only, 0.12 s vs 2.7 s for dense SDPA; its backward raises
  ``NotImplementedError`` and the first call at each shape compiles for 10-20 s.
- CPU, eager: materialises all ``T * T`` scores (70 s): never useful.

So training on CPU goes through :mod:`.blocked` instead; this path serves GPU training and
long-sequence inference on CPU.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from longarena.ops.attention.patterns import Geometry, Pattern, block_layout
from longarena.ops.attention.sparse_reference import ScoreBias, check_qkv

#: tile edge for flex kernels (the kernels' default sparse block)
DEFAULT_BLOCK = 128


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_supports_grad(device: torch.device) -> bool:
    """Whether flex_attention has a backward on ``device`` (not on CPU in torch 2.13)."""
    return torch.device(device).type == "cuda"


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
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    check_qkv(q, k, v, key_mask)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if needs_grad and not flex_supports_grad(q.device):
        raise RuntimeError(
            f"flex_attention has no backward on {q.device.type} in torch {torch.__version__}; "
            "use the 'blocked' backend to train there, or run under torch.no_grad()"
        )
    b, h, tq, dk = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    c = block_size
    n_q, n_k = math.ceil(tq / c), math.ceil(tk / c)
    offset = tk - tq if q_offset is None else q_offset
    geo = Geometry(tq, tk, offset, h, key_mask, q.device, q_cap=n_q * c, kv_cap=n_k * c)
    bound = pattern.bind(geo)
    layout = block_layout(bound, c)
    partial = layout.any & ~layout.full

    def as_kv_blocks(tiles: Tensor) -> tuple[Tensor, Tensor]:
        tiles = tiles.expand(-1, -1, n_q, n_k)
        order = torch.sort((~tiles).to(torch.uint8), dim=-1, stable=True).indices
        return tiles.sum(-1).to(torch.int32).contiguous(), order.to(torch.int32).contiguous()

    key_valid = torch.ones(b, tk, dtype=torch.bool, device=q.device) if key_mask is None else key_mask
    key_valid = F.pad(key_valid, (0, n_k * c - tk))  # (B, nKb*C)

    def mask_mod(bi: Tensor, hi: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
        return bound.allowed(bi, hi, qi, ki) & key_valid[bi, ki]

    score_mod = None
    if score_bias is not None:

        def score_mod(score: Tensor, bi: Tensor, hi: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
            return score + score_bias(bi, hi, qi, ki).to(score.dtype)

    kv_num, kv_idx = as_kv_blocks(partial)
    full_num, full_idx = as_kv_blocks(layout.full)
    block_mask = BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=c, mask_mod=mask_mod, seq_lengths=(n_q * c, n_k * c)
    )
    qp = F.pad(q, (0, 0, 0, n_q * c - tq))  # (B, H, nQb*C, K)
    kp = F.pad(k, (0, 0, 0, n_k * c - tk))  # (B, Hkv, nKb*C, K)
    vp = F.pad(v, (0, 0, 0, n_k * c - tk))
    fn = _compiled_flex() if compiled else flex_attention
    out = fn(qp, kp, vp, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=h != hkv)
    return out[:, :, :tq]
