"""Elementwise complex helpers that stay vectorised on CPU."""

from __future__ import annotations

import torch
from torch import Tensor


def exp(z: Tensor) -> Tensor:
    """``exp(z)`` for real or complex ``z``.

    torch's complex ``exp`` is not vectorised on CPU (~4x-50x slower than this, by size);
    ``exp(a + ib) = e^a (cos b + i sin b)`` runs on real tensors instead. Same values within
    float rounding, same gradients.
    """
    if z.is_complex():
        return torch.polar(torch.exp(z.real), z.imag)
    return torch.exp(z)
