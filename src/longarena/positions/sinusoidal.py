"""Sinusoidal absolute position embedding (Vaswani et al. 2017).

``PE[p, 2i] = sin(p w_i)``, ``PE[p, 2i+1] = cos(p w_i)`` with ``w_i = base^(-2i/D)``. It is
*absolute*: the model adds ``embed(positions, d_model)`` to its token embeddings before the
first layer, and the attention layers themselves add nothing for it (an attention mixer
built with ``position="sinusoidal"`` behaves like ``position="none"``). Models find out by
checking ``scheme.absolute``::

    scheme = positions.get("sinusoidal")
    h = token_embedding(input_ids) + scheme.embed(torch.arange(T), d_model)  # (B, T, D)
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from longarena.config import ConfigError
from longarena.positions.base import PositionConfig, PositionScheme, register


@dataclasses.dataclass
class SinusoidalConfig(PositionConfig):
    base: float = 10000.0

    def validate(self) -> None:
        super().validate()
        if not self.base > 1:
            raise ConfigError(f"sinusoidal base must be > 1, got {self.base}")


def sinusoid_angles(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Angles ``p * base^(-2i/dim)``: positions (...,) -> (..., dim/2) float32."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"sinusoidal embeddings need a positive even width, got {dim}")
    inv_freq = base ** -(torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    return (positions.to(torch.float64)[..., None] * inv_freq).float()


def sinusoidal_embedding(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Interleaved ``[sin, cos, sin, cos, ...]`` embedding: positions (...,) -> (..., dim)."""
    angles = sinusoid_angles(positions, dim, base)  # (..., dim/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


@register("sinusoidal")
class Sinusoidal(PositionScheme):
    """Absolute sin/cos embedding added by the model to its inputs (attention adds nothing)."""

    config_class = SinusoidalConfig
    absolute = True

    def embed(self, positions: Tensor, d_model: int) -> Tensor:
        """positions (T,) or (B, T) int -> (T, D) or (B, T, D) float32."""
        return sinusoidal_embedding(positions, d_model, self.config.base)
