"""Rotary position embedding (RoPE, Su et al. 2021).

Pairs of query/key channels ``(x_i, x_{i+K/2})`` are rotated by angle ``p * w_i`` with
``w_i = theta^(-2i/K)``; the score ``q_m . k_n`` then depends on ``m - n`` only. We use the
rotate-half channel layout of Llama/transformers so that patched HF models match.

The context-extension scalings (:mod:`.rope_scaling`) subclass :class:`Rope` and change
only ``frequencies()``: which ``w_i`` to use and how much to scale the rotated vectors.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from longarena.config import ConfigError
from longarena.positions.base import PositionConfig, PositionScheme, register


@dataclasses.dataclass
class RopeConfig(PositionConfig):
    theta: float = 10000.0

    def validate(self) -> None:
        super().validate()
        if self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if not self.theta > 1:
            raise ConfigError(f"RoPE theta must be > 1, got {self.theta}")


def rope_inv_freq(head_dim: int, theta: float | Tensor, device: torch.device | None = None) -> Tensor:
    """Frequencies ``w_i = theta^(-2i/K)``, i < K/2, as float32 (K/2,).

    Computed in float64 and rounded once, so every scaling that reduces to plain RoPE
    (factor 1) gives bit-identical frequencies. ``theta`` may be a 0-d tensor (dynamic NTK
    computes it on the fly, on the device of the positions).
    """
    if isinstance(theta, Tensor):
        device = theta.device
    theta = torch.as_tensor(theta, dtype=torch.float64, device=device)
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim
    return (theta ** -exponents).float()


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, positions: Tensor, inv_freq: Tensor, attention_scale: float = 1.0) -> Tensor:
    """Rotate x: (B, H, T, K) at positions (T,) or (B, T) with frequencies inv_freq: (K/2,).

    ``attention_scale`` multiplies the rotated vector; applied to both q and k it scales
    the scores by its square (YaRN's temperature), as transformers does with cos/sin.
    """
    if positions.dim() not in (1, 2) or positions.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"positions must have shape (T,) or (B, T) with T = {x.shape[-2]} to match x {tuple(x.shape)}, "
            f"got {tuple(positions.shape)}"
        )
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
        inv_freq, self.attention_scale = self.frequencies()
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def frequencies(self) -> tuple[Tensor, float]:
        """(inv_freq (K/2,) float32, attention_scale): plain RoPE; scalings override this."""
        return rope_inv_freq(self.config.head_dim, self.config.theta), 1.0

    def _apply(self, fn, recurse=True):
        # ``module.to(bfloat16)`` would round the frequencies (and so every angle p * w_i) to
        # bf16; follow device moves but keep them float32.
        inv_freq = self.inv_freq
        super()._apply(fn, recurse)
        self.inv_freq = inv_freq.to(self.inv_freq.device)
        return self

    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        return apply_rotary(x, positions, self.inv_freq, self.attention_scale)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.to_dict().items())
