"""Softmax attention written out: the specification the fast paths are tested against."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def attention_mask(
    q_len: int,
    k_len: int,
    *,
    causal: bool,
    key_mask: Tensor | None = None,
    device: torch.device | None = None,
) -> Tensor | None:
    """Boolean mask of allowed (query, key) pairs, True = attend.

    Queries are the last ``q_len`` of ``k_len`` positions (a KV cache holds the first
    ``k_len - q_len``), so causal masking is aligned to the bottom right. Returns
    ``(B, 1, q_len, k_len)`` with a ``key_mask: (B, k_len)``, else ``(q_len, k_len)`` or None.
    """
    mask = None
    if causal:
        offset = k_len - q_len
        q_pos = torch.arange(q_len, device=device)[:, None] + offset
        k_pos = torch.arange(k_len, device=device)[None, :]
        mask = k_pos <= q_pos  # (Tq, Tk)
    if key_mask is not None:
        km = key_mask[:, None, None, :]  # (B, 1, 1, Tk)
        mask = km if mask is None else (km & mask)
    return mask


def attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    bias: Tensor | None = None,
    key_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """``softmax(q k^T * scale + bias, masked) v`` with grouped-query heads.

    q: (B, H, Tq, K); k: (B, Hkv, Tk, K); v: (B, Hkv, Tk, V) with H a multiple of Hkv;
    bias: broadcastable to (B, H, Tq, Tk); key_mask: (B, Tk) bool, True = real token.
    Returns (B, H, Tq, V). Rows with no allowed key return zeros.
    """
    _, h, tq, dk = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    group = h // hkv
    k = k.repeat_interleave(group, dim=1)  # (B, H, Tk, K)
    v = v.repeat_interleave(group, dim=1)  # (B, H, Tk, V)
    scale = 1.0 / math.sqrt(dk) if scale is None else scale
    work = torch.promote_types(q.dtype, torch.float32)  # fp32 at least; float64 stays float64
    scores = torch.einsum("bhqk,bhsk->bhqs", q.to(work), k.to(work)) * scale  # (B, H, Tq, Tk)
    if bias is not None:
        scores = scores + bias.to(work)
    mask = attention_mask(tq, tk, causal=causal, key_mask=key_mask, device=q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)  # rows with every key masked
    return torch.einsum("bhqs,bhsv->bhqv", weights, v.to(work)).to(q.dtype)
