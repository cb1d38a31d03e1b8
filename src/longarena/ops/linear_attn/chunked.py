"""Decayed linear attention in chunks, in torch: parallel inside chunks, recurrent across them.

Inside a chunk of C tokens, with ``c_i`` the log decay summed from the chunk's start to
token i (inclusive) and ``G = c_{C-1}`` the chunk's total::

    o_i = scale * ( exp(c_i) q_i S_in  +  sum_{j <= i} exp(c_i - c_j) (q_i . k_j) v_j )
    S_out = exp(G) S_in  +  sum_j exp(G - c_j) k_j^T v_j

so a chunk costs two C x C products and the chunks are a diagonal linear recurrence on
``(K, V)`` matrices. O(T C) time, O(T) memory. T need not be a multiple of C: the tail is
padded with tokens that neither decay nor write the state. Every exponent above is <= 0, so
nothing overflows whatever the decay. This is the CPU path and the form the Triton kernels
(:mod:`.triton_chunk`) follow; both are tested against :mod:`.reference`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longarena.ops.linear_attn.reference import check_inputs, step_log_decay
from longarena.ops.scan import linear_scan

__all__ = ["linear_attention_chunked"]


def linear_attention_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    gamma: Tensor | None = None,
    log_decay: Tensor | None = None,
    state: Tensor | None = None,
    scale: float = 1.0,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """See the module docstring. Returns ``(o: (B, H, T, V), S_last: (B, H, K, V) fp32)``."""
    check_inputs(q, k, v, gamma, log_decay, state)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    c = chunk_size
    n = -(-t // c)
    pad = n * c - t
    # float64 modules stay float64; everything else is summed in float32
    work = torch.float64 if v.dtype == torch.float64 else torch.float32
    qf, kf, vf = (F.pad(x.to(work), (0, 0, 0, pad)) for x in (q, k, v))
    # padded steps decay by exp(0) = 1 and write k = 0: the carried state stays exact
    log_a = F.pad(step_log_decay(q, gamma, log_decay).to(work), (0, pad))  # (B, H, Tp)
    cum = log_a.view(b, h, n, c).cumsum(-1)  # (B, H, N, C): c_i
    total = cum[..., -1]  # (B, H, N): G

    qc = qf.view(b, h, n, c, dk) * scale  # (B, H, N, C, K)
    kc = kf.view(b, h, n, c, dk)
    vc = vf.view(b, h, n, c, dv)  # (B, H, N, C, V)

    tri = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    diff = cum[..., :, None] - cum[..., None, :]  # (B, H, N, C, C): c_i - c_j
    intra_decay = torch.exp(diff.masked_fill(~tri, float("-inf")))
    scores = torch.einsum("bhnik,bhnjk->bhnij", qc, kc) * intra_decay  # (B, H, N, C, C)
    o = torch.einsum("bhnij,bhnjv->bhniv", scores, vc)

    to_end = torch.exp(total[..., None] - cum)  # (B, H, N, C): exp(G - c_j)
    chunk_kv = torch.einsum("bhnjk,bhnjv->bhnkv", kc * to_end[..., None], vc)  # (B, H, N, K, V)
    # across chunks: S_n = exp(G_n) S_{n-1} + kv_n, a diagonal linear recurrence over n
    chunk_decay = torch.exp(total).transpose(1, 2)[..., None, None]  # (B, N, H, 1, 1)
    s0 = q.new_zeros(b, h, dk, dv, dtype=work) if state is None else state.to(work)
    s_ends, s = linear_scan(chunk_decay, chunk_kv.transpose(1, 2), s0)  # (B, N, H, K, V), (B, H, K, V)
    s_start = torch.cat((s0[:, None], s_ends[:, :-1]), dim=1).transpose(1, 2)  # (B, H, N, K, V): entering each chunk
    o = o + torch.einsum("bhnik,bhnkv->bhniv", qc * torch.exp(cum)[..., None], s_start)
    o = o.reshape(b, h, n * c, dv)[:, :, :t]
    return o.to(v.dtype), s if work == torch.float64 else s.float()
