"""Long convolution through the FFT: ``O(T log T)`` for kernels as long as the sequence.

Both signals are zero-padded to ``n >= T + K - 1`` (K the kernel length) before the real FFT,
so the product of spectra is a *linear* convolution, with no circular wrap-around from the
end of the sequence into its start. Half-precision inputs are transformed in fp32 (bf16 FFTs
are not supported on CPU and lose too much precision) and cast back.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _fast_size(n: int) -> int:
    """The smallest ``m >= n`` of the form 2^i 3^j 5^k, a size every FFT handles quickly."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < 2 * n:
        p35 = p5
        while p35 < 2 * n:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def long_conv_fft(u: Tensor, kernel: Tensor, *, causal: bool = True) -> Tensor:
    """Same contract as :func:`~longarena.ops.conv.reference.long_conv_reference`, via rfft."""
    work = torch.promote_types(torch.promote_types(u.dtype, kernel.dtype), torch.float32)
    t_len = u.shape[1]
    if causal:
        k = kernel[:, :t_len]  # taps beyond T - 1 never meet an input
        offset = 0
    else:
        half = (kernel.shape[-1] - 1) // 2
        keep = min(half, t_len - 1)
        k = kernel[:, half - keep : half + keep + 1]  # (D, 2 keep + 1), lags beyond T - 1 never meet an input
        offset = keep  # output t sits at index t + keep of the full linear convolution
    n = _fast_size(t_len + k.shape[-1] - 1)
    u_f = torch.fft.rfft(u.to(work).transpose(1, 2), n=n)  # (B, D, n//2+1)
    k_f = torch.fft.rfft(k.to(work), n=n)  # (D, n//2+1)
    y = torch.fft.irfft(u_f * k_f, n=n)[..., offset : offset + t_len]  # (B, D, T)
    return y.transpose(1, 2).to(u.dtype)
