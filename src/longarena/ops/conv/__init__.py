"""Long per-channel convolutions, causal or two-sided (S4, H3, Hyena, Mega's EMA).

``long_conv(u, kernel, *, causal=True, backend="auto") -> y``

- ``u: (B, T, D)``, real; returns ``y: (B, T, D)`` in ``u.dtype``.
- causal: ``kernel: (D, L)``, ``y[:, t, d] = sum_{s=0}^{min(t, L-1)} kernel[d, s] * u[:, t-s, d]``.
- ``causal=False``: a two-sided ``kernel: (D, 2L-1)`` centred at index ``L-1``:
  ``y[:, t, d] = sum_{s=-(L-1)}^{L-1} kernel[d, s+L-1] * u[:, t-s, d]``, the sequence
  zero-padded at both ends.

``L`` may be shorter or longer than ``T`` (taps that never meet an input are dropped).
bf16/fp16 inputs are computed in fp32 and cast back; gradients flow to ``u`` and ``kernel``.

Backends: ``"reference"`` (:mod:`.reference`, a loop over taps: the specification),
``"direct"`` (:mod:`.direct`, depthwise ``conv1d``, ``O(T L)``, exactly causal) and ``"fft"``
(:mod:`.fft`, zero-padded rfft, ``O(T log T)``; its rounding leaves ~1e-8 dependences on
later inputs). ``"auto"`` picks ``"direct"`` when at most :data:`DIRECT_MAX_TAPS` taps meet
the sequence, else ``"fft"``.
"""

from __future__ import annotations

from torch import Tensor

from longarena.ops.conv.direct import long_conv_direct
from longarena.ops.conv.fft import long_conv_fft
from longarena.ops.conv.reference import long_conv_reference

BACKENDS = {"reference": long_conv_reference, "direct": long_conv_direct, "fft": long_conv_fft}
#: "auto" convolves directly when at most this many taps can meet the sequence
DIRECT_MAX_TAPS = 64

__all__ = [
    "BACKENDS",
    "DIRECT_MAX_TAPS",
    "long_conv",
    "long_conv_direct",
    "long_conv_fft",
    "long_conv_reference",
]


def long_conv(u: Tensor, kernel: Tensor, *, causal: bool = True, backend: str = "auto") -> Tensor:
    """Per-channel long convolution of ``u: (B, T, D)``; see the module docstring."""
    if u.dim() != 3:
        raise ValueError(f"long_conv expects u of shape (B, T, D), got shape {tuple(u.shape)}")
    if u.is_complex() or kernel.is_complex():
        raise ValueError("long_conv expects real u and kernel; take the real part of a complex kernel first")
    if kernel.dim() != 2 or kernel.shape[0] != u.shape[2]:
        raise ValueError(
            f"long_conv expects kernel of shape (D, L) with D = {u.shape[2]}, got {tuple(kernel.shape)}"
        )
    if kernel.shape[1] == 0:
        raise ValueError("long_conv expects a kernel with at least one tap, got length 0")
    if not causal and kernel.shape[1] % 2 == 0:
        raise ValueError(
            "a two-sided kernel (causal=False) has odd length 2L-1 centred at L-1, "
            f"got length {kernel.shape[1]}"
        )
    if backend == "auto":
        taps = min(kernel.shape[1], u.shape[1] if causal else 2 * u.shape[1] - 1)
        backend = "direct" if taps <= DIRECT_MAX_TAPS else "fft"
    if backend not in BACKENDS:
        raise ValueError(f"unknown long_conv backend {backend!r}; known: {sorted(BACKENDS)} or 'auto'")
    return BACKENDS[backend](u, kernel, causal=causal)
