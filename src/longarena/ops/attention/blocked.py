"""Block-sparse attention by gathering key blocks: the trainable fast path on any device.

Queries are cut into blocks of ``C`` rows. Each query block gathers the ``M`` key blocks
its pattern reaches (:func:`~longarena.ops.attention.patterns.block_layout`) and runs a
dense masked softmax over those ``M * C`` keys only, so time and memory are
``O(T * M * C)``: linear in ``T`` for a fixed window. Query rows that attend everywhere
(global tokens) would make ``M`` the number of all blocks, so they are computed apart,
densely (``O(G * T)``), and written over their blocked rows.

Plain torch ops throughout, so autograd gives the backward pass (flex_attention has no
backward on CPU in torch 2.13) and it runs on CPU and GPU alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from longarena.ops.attention.patterns import Geometry, MaskFn, Pattern, block_layout
from longarena.ops.attention.sparse_reference import ScoreBias, check_qkv, index_grids, masked_softmax

DEFAULT_BLOCK = 64


def blocked_sparse_attention(
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
) -> Tensor:
    """Same contract as :func:`~longarena.ops.attention.sparse_reference.sparse_attention_reference`.

    Lengths that ``block_size`` does not divide are padded internally (padded keys are
    masked, padded query rows dropped).
    """
    check_qkv(q, k, v, key_mask)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    b, h, tq, dk = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    c = block_size
    n_q, n_k = math.ceil(tq / c), math.ceil(tk / c)
    offset = tk - tq if q_offset is None else q_offset
    scale = 1.0 / math.sqrt(dk) if scale is None else scale
    geo = Geometry(tq, tk, offset, h, key_mask, q.device, q_cap=n_q * c, kv_cap=n_k * c)
    bound = pattern.bind(geo)
    layout = block_layout(bound, c, exclude_dense_rows=True)
    idx = layout.indices  # (Bl, Hl, nQb, M)
    m = idx.shape[-1]
    slot_used = torch.arange(m, device=q.device) < layout.counts[..., None]  # (Bl, Hl, nQb, M)

    key_valid = torch.ones(b, tk, dtype=torch.bool, device=q.device) if key_mask is None else key_mask
    key_valid = F.pad(key_valid, (0, n_k * c - tk))  # (B, nKb*C): padding past Tk is never real

    acc = torch.promote_types(q.dtype, torch.float32)  # low-precision inputs accumulate in fp32
    qb = F.pad(q, (0, 0, 0, n_q * c - tq)).to(acc).view(b, h, n_q, c, dk)  # (B, H, nQb, C, K)
    kb = F.pad(k, (0, 0, 0, n_k * c - tk)).to(acc).view(b, hkv, n_k, c, dk)  # (B, Hkv, nKb, C, K)
    vb = F.pad(v, (0, 0, 0, n_k * c - tk)).to(acc).view(b, hkv, n_k, c, v.shape[-1])
    bi = torch.arange(b, device=q.device).view(-1, 1, 1, 1)
    hi = (torch.arange(h, device=q.device) // (h // hkv)).view(1, -1, 1, 1)
    kg = kb[bi, hi, idx].flatten(3, 4)  # (B, H, nQb, M*C, K)
    vg = vb[bi, hi, idx].flatten(3, 4)  # (B, H, nQb, M*C, V)

    # int32 positions: the mask is built on (B, H, nQb, C, M*C) grids, half the memory of int64
    k_pos = (idx.int()[..., None] * c + torch.arange(c, device=q.device, dtype=torch.int32)).flatten(3, 4)
    k_pos = k_pos.unsqueeze(3)  # (Bl, Hl, nQb, 1, M*C)
    q_pos = torch.arange(n_q * c, device=q.device, dtype=torch.int32).view(1, 1, n_q, c, 1)
    b5, h5 = bi.unsqueeze(-1), torch.arange(h, device=q.device).view(1, -1, 1, 1, 1)
    scores = torch.einsum("bhiqd,bhikd->bhiqk", qb * scale, kg)  # (B, H, nQb, C, M*C)
    if score_bias is not None:
        scores = scores + score_bias(b5, h5, q_pos, k_pos).to(acc)

    # full tiles hold only allowed pairs of real keys: when every gathered tile is full
    # (BigBird with tile = its block), the elementwise mask is skipped altogether
    lead = torch.broadcast_shapes(layout.full.shape[:-1], idx.shape[:-1])
    full_slot = layout.full.expand(*lead, -1).gather(-1, idx.expand(*lead, -1))  # (.., nQb, M)
    if bool((full_slot | ~slot_used).all()):
        if bool(slot_used.all()):
            weights = torch.softmax(scores, dim=-1)
            out = torch.einsum("bhiqk,bhikv->bhiqv", weights, vg)
        else:
            used = slot_used.repeat_interleave(c, dim=-1).unsqueeze(3)  # (Bl, Hl, nQb, 1, M*C)
            out = _masked_rows(scores, used, vg)
    else:
        allowed = bound.allowed(b5, h5, q_pos, k_pos)
        if not bool(slot_used.all()):  # unused slots repeat block 0: mask them out
            allowed = allowed & slot_used.repeat_interleave(c, dim=-1).unsqueeze(3)
        if key_mask is not None:
            allowed = allowed & key_valid[b5, k_pos]
        elif tk % c:
            allowed = allowed & (k_pos < tk)
        out = _masked_rows(scores, allowed, vg)
    out = out.flatten(2, 3)[:, :, :tq]  # (B, H, Tq, V)

    if bound.dense_queries is not None:
        rows = bound.dense_queries.nonzero().squeeze(1)  # (G,)
        dense = _dense_rows(q, k, v, bound.allowed, rows, key_valid[:, :tk], score_bias, scale)  # (B, H, G, V)
        out = out.index_copy(2, rows, dense)
    return out.to(q.dtype)


def _masked_rows(scores: Tensor, allowed: Tensor, vg: Tensor) -> Tensor:
    """masked_softmax(scores, allowed) @ vg per tile: (B, H, nQb, C, V).

    Rows without any allowed key are zeroed on the (C, V) output rather than on the
    (C, M*C) weights, which saves a full pass over the largest tensor.
    """
    weights = torch.softmax(scores.masked_fill(~allowed, -1e30), dim=-1)
    return torch.einsum("bhiqk,bhikv->bhiqv", weights, vg) * allowed.any(dim=-1, keepdim=True)


def _dense_rows(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    allowed_fn: MaskFn,
    rows: Tensor,
    key_valid: Tensor,
    score_bias: ScoreBias | None,
    scale: float,
) -> Tensor:
    """Attention of the query ``rows`` (G,) over every key: (B, H, G, V), at least float32."""
    b, h = q.shape[:2]
    group = h // k.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    kf = k.to(acc).repeat_interleave(group, dim=1)  # (B, H, Tk, K)
    vf = v.to(acc).repeat_interleave(group, dim=1)  # (B, H, Tk, V)
    bi, hi, _, ki = index_grids(b, h, 1, k.shape[2], q.device)
    qi = rows.view(1, 1, -1, 1)
    scores = torch.einsum("bhgd,bhkd->bhgk", q[:, :, rows].to(acc), kf) * scale  # (B, H, G, Tk)
    if score_bias is not None:
        scores = scores + score_bias(bi, hi, qi, ki).to(acc)
    allowed = allowed_fn(bi, hi, qi, ki) & key_valid[:, None, None, :]
    return torch.einsum("bhgk,bhkv->bhgv", masked_softmax(scores, allowed), vf)
