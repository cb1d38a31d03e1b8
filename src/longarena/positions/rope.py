"""Rotary position embedding (RoPE, Su et al. 2021).

Pairs of query/key channels ``(x_i, x_{i+K/2})`` are rotated by angle ``p * w_i`` with
``w_i = theta^(-2i/K)``; the score ``q_m . k_n`` then depends on ``m - n`` only. We use the
rotate-half channel layout of Llama/transformers so that patched HF models match.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from longarena.config import ConfigError
from longarena.positions import register
from longarena.positions.base import PositionConfig, PositionScheme


@dataclasses.dataclass
class RopeConfig(PositionConfig):
    theta: float = 10000.0

    def validate(self) -> None:
        super().validate()
        if self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.theta <= 1:
            raise ConfigError(f"RoPE theta must be > 1, got {self.theta}")


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, positions: Tensor, inv_freq: Tensor, attention_scale: float = 1.0) -> Tensor:
    """Rotate x: (B, H, T, K) at positions (T,) or (B, T) with frequencies inv_freq: (K/2,)."""
    angles = positions.to(torch.float32)[..., None] * inv_freq.to(torch.float32)  # (..., T, K/2)
    angles = torch.cat((angles, angles), dim=-1)  # (..., T, K)
    if angles.dim() == 3:  # (B, T, K) -> (B, 1, T, K)
        angles = angles[:, None]
    cos, sin = angles.cos() * attention_scale, angles.sin() * attention_scale
    out = x.float() * cos + rotate_half(x.float()) * sin
    return out.to(x.dtype)


@register("rope")
class Rope(PositionScheme):
    """Rotary embedding on queries and keys (relative by construction)."""

    config_class = RopeConfig

    def __init__(self, config: RopeConfig) -> None:
        super().__init__(config)
        k = config.head_dim
        inv_freq = config.theta ** (-torch.arange(0, k, 2, dtype=torch.float64) / k)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        return apply_rotary(x, positions, self.inv_freq)
