"""The diagonal linear recurrence written as a plain loop over time: the specification."""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype a scan accumulates in: the promoted dtype, with half precisions raised to fp32.

    A recurrence multiplies thousands of decays together, so bf16/fp16 rounding would compound;
    every backend accumulates in at least fp32 and casts the result back.
    """
    dtype = dtypes[0]
    for other in dtypes[1:]:
        dtype = torch.promote_types(dtype, other)
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype == torch.complex32:
        return torch.complex64
    return dtype


def result_dtype(*dtypes: torch.dtype) -> torch.dtype:
    dtype = dtypes[0]
    for other in dtypes[1:]:
        dtype = torch.promote_types(dtype, other)
    return dtype


def linear_scan_reference(a: Tensor, b: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``h_t = a_t * h_{t-1} + b_t`` one step at a time.

    a: broadcastable to b; b: (B, T, *S); h0: broadcastable to (B, *S) or None (zeros).
    Returns ``(h: (B, T, *S), h_last: (B, *S))``.
    """
    out_dtype = result_dtype(a.dtype, b.dtype)
    work = compute_dtype(a.dtype, b.dtype)
    a, b = torch.broadcast_tensors(a.to(work), b.to(work))
    state_shape = (b.shape[0], *b.shape[2:])  # (B, *S)
    h = b.new_zeros(state_shape) if h0 is None else h0.to(work).expand(state_shape)
    hs = []
    # unbind, not a[:, t]: the backward of indexing would write a full-size gradient per step
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
        h = a_t * h + b_t
        hs.append(h)
    h_all = torch.stack(hs, dim=1) if hs else b
    return h_all.to(out_dtype), h.to(out_dtype)
