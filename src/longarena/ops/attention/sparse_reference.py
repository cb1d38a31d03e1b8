"""Sparse attention written out densely: the specification of the block-sparse kernels.

``softmax(q k^T * scale + bias, masked by the pattern and the key padding) v`` over the
full ``(Tq, Tk)`` score matrix. O(Tq * Tk) time and memory: a reference, not a path to
train with.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from longarena.ops.attention.patterns import Geometry, Pattern, dense_mask

#: ``(b, h, q, k) -> float tensor``: an additive score bias on broadcastable integer
#: indices (the same indices as a pattern's ``allowed``); also a flex ``score_mod``
ScoreBias = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def check_qkv(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> None:
    """Raise ValueError unless q: (B, H, Tq, K), k: (B, Hkv, Tk, K), v: (B, Hkv, Tk, V)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        shapes = f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        raise ValueError(f"q, k, v must be (B, H, T, K); got shapes {shapes}")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        raise ValueError(f"{shapes} do not fit (B, H, T, K) together")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if key_mask is not None and (key_mask.dtype != torch.bool or key_mask.shape != (k.shape[0], k.shape[2])):
        raise ValueError(
            f"key_mask must be bool (B, Tk) = {(k.shape[0], k.shape[2])}, "
            f"got {key_mask.dtype} {tuple(key_mask.shape)}"
        )


def masked_softmax(scores: Tensor, allowed: Tensor) -> Tensor:
    """Softmax over the last dim of the allowed entries; a row with none gives zeros.

    Masked scores get a large finite negative value rather than -inf, so a fully masked
    row yields finite weights (then zeroed) and finite gradients, never NaN: kernels may
    compute padding rows and throw them away. ``scores`` must be float32 or wider.
    """
    weights = torch.softmax(scores.masked_fill(~allowed, -1e30), dim=-1)
    return weights * allowed.any(dim=-1, keepdim=True)


def index_grids(batch: int, heads: int, q_len: int, kv_len: int, device: torch.device) -> tuple[Tensor, ...]:
    """``b, h, q, k`` arange grids of shapes (B,1,1,1), (1,H,1,1), (1,1,Tq,1), (1,1,1,Tk)."""
    return (
        torch.arange(batch, device=device).view(-1, 1, 1, 1),
        torch.arange(heads, device=device).view(1, -1, 1, 1),
        torch.arange(q_len, device=device).view(1, 1, -1, 1),
        torch.arange(kv_len, device=device).view(1, 1, 1, -1),
    )


def sparse_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: Pattern,
    *,
    key_mask: Tensor | None = None,
    score_bias: ScoreBias | None = None,
    scale: float | None = None,
    q_offset: int | None = None,
) -> Tensor:
    """Dense masked attention under ``pattern``.

    q: (B, H, Tq, K); k: (B, Hkv, Tk, K); v: (B, Hkv, Tk, V), H a multiple of Hkv;
    key_mask: (B, Tk) bool, True = real key; ``q_offset`` (default ``Tk - Tq``) places the
    queries after a KV cache. Returns (B, H, Tq, V); rows with no allowed key are zero.
    """
    check_qkv(q, k, v, key_mask)
    b, h, tq, dk = q.shape
    tk = k.shape[2]
    offset = tk - tq if q_offset is None else q_offset
    geo = Geometry(tq, tk, offset, h, key_mask, q.device)
    allowed = dense_mask(pattern.bind(geo))  # (B|1, H|1, Tq, Tk)
    group = h // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # (B, H, Tk, K)
    v = v.repeat_interleave(group, dim=1)  # (B, H, Tk, V)
    scale = 1.0 / math.sqrt(dk) if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)  # low-precision inputs accumulate in fp32
    scores = torch.einsum("bhqd,bhkd->bhqk", q.to(acc), k.to(acc)) * scale  # (B, H, Tq, Tk)
    if score_bias is not None:
        scores = scores + score_bias(*index_grids(b, h, tq, tk, q.device)).to(acc)
    weights = masked_softmax(scores, allowed)
    return torch.einsum("bhqk,bhkv->bhqv", weights, v.to(acc)).to(q.dtype)
