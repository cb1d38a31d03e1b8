"""Long convolution written as a sum over kernel taps: the specification."""

from __future__ import annotations

import torch
from torch import Tensor


def long_conv_reference(u: Tensor, kernel: Tensor, *, causal: bool = True) -> Tensor:
    """Direct convolution of ``u: (B, T, D)`` with a per-channel ``kernel``, one tap at a time.

    causal: kernel (D, L), ``y[:, t, d] = sum_{s=0}^{min(t, L-1)} kernel[d, s] * u[:, t-s, d]``.
    two-sided (``causal=False``): kernel (D, 2L-1) centred at index L-1,
    ``y[:, t, d] = sum_{s=-(L-1)}^{L-1} kernel[d, s+L-1] * u[:, t-s, d]`` with zeros outside
    ``0 <= t-s < T``. Accumulates in fp32 for half-precision inputs; returns ``u.dtype``.
    """
    work = torch.promote_types(torch.promote_types(u.dtype, kernel.dtype), torch.float32)
    uw, kw = u.to(work), kernel.to(work)
    t_len = u.shape[1]
    y = torch.zeros_like(uw)
    half = 0 if causal else (kernel.shape[-1] - 1) // 2
    for j in range(kernel.shape[-1]):
        s = j - half  # the lag of tap j
        if s >= t_len or -s >= t_len:
            continue
        tap = kw[:, j]  # (D,)
        if s >= 0:
            y[:, s:] = y[:, s:] + tap * uw[:, : t_len - s]
        else:
            y[:, :s] = y[:, :s] + tap * uw[:, -s:]
    return y.to(u.dtype)
