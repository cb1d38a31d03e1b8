"""Transformer-XL relative position encoding (Dai et al. 2019), as a score bias.

Transformer-XL writes the score of query i and key j (per head) as four terms::

    A_ij = q_i.k_j  +  q_i.W_r R_{i-j}  +  u.k_j  +  v.W_r R_{i-j}
           (a) content   (b) content-position  (c) global content  (d) global position

where ``R_d`` is a fixed sinusoidal embedding of the *relative distance* d = i - j (the
``[sin | cos]`` layout of the paper), ``W_r`` a learned projection and ``u``, ``v`` learned
per-head vectors. Term (a) is ordinary attention; :meth:`RelativeSinusoidal.score_bias`
returns (b) + (c) + (d), divided by ``sqrt(K)`` like (a), so any attention op that takes an
additive bias computes the XL score. No rotation, no absolute embedding.

This is the building block of the Transformer-XL model: there, the keys of a segment are
the cached memory of the previous segment followed by the current one, and ``k_pos`` gives
their true positions (memory positions precede the segment's), so the relative distances
are right without the paper's "relative shift" trick; we gather by distance instead.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.positions.base import PositionConfig, PositionScheme, register
from longarena.positions.sinusoidal import sinusoid_angles


@dataclasses.dataclass
class XLConfig(PositionConfig):
    #: width of the sinusoidal distance embedding R (None = n_heads * head_dim)
    rel_dim: int | None = None
    base: float = 10000.0
    #: std of the normal initialisation of W_r, u and v
    init_std: float = 0.02

    def validate(self) -> None:
        super().validate()
        if self.rel_dim is not None and (self.rel_dim <= 0 or self.rel_dim % 2):
            raise ConfigError(f"rel_dim must be a positive even int or None, got {self.rel_dim}")
        if not self.base > 1:
            raise ConfigError(f"base must be > 1, got {self.base}")


def relative_sinusoid(distances: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Transformer-XL's ``R_d = [sin(d w) | cos(d w)]``: distances (L,) -> (L, dim)."""
    angles = sinusoid_angles(distances, dim, base)  # (L, dim/2)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


@register("xl")
class RelativeSinusoidal(PositionScheme):
    """Transformer-XL relative encoding: sinusoidal distance embeddings, W_r, u and v."""

    config_class = XLConfig

    def __init__(self, config: XLConfig) -> None:
        super().__init__(config)
        h, k = config.n_heads, config.head_dim
        self.rel_dim = config.rel_dim or h * k
        self.r_proj = nn.Linear(self.rel_dim, h * k, bias=False)  # W_r
        nn.init.normal_(self.r_proj.weight, std=config.init_std)
        self.u = nn.Parameter(torch.randn(h, k) * config.init_std)
        self.v = nn.Parameter(torch.randn(h, k) * config.init_std)

    def score_bias(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Terms (b) + (c) + (d) / sqrt(K): (B, H, Tq, Tk).

        q: (B, H, Tq, K); k: (B, Hkv, Tk, K) with H a multiple of Hkv; q_pos: (Tq,) or
        (B, Tq); k_pos: (Tk,) or (B, Tk).
        """
        b, h, tq, dk = q.shape
        if h != self.config.n_heads or dk != self.config.head_dim:
            raise ValueError(
                f"xl scheme was built for {self.config.n_heads} heads of width {self.config.head_dim}, "
                f"got queries {tuple(q.shape)}"
            )
        k = k.repeat_interleave(h // k.shape[1], dim=1)  # (B, H, Tk, K)
        rel = q_pos[..., :, None] - k_pos[..., None, :]  # (..., Tq, Tk)
        lo, hi = rel.min(), rel.max()
        # embed each distinct distance once, then gather: O(Tq (Tq + Tk)) instead of O(Tq Tk) embeddings
        distances = torch.arange(lo.item(), hi.item() + 1, device=q.device)  # (L,)
        r = self.r_proj(relative_sinusoid(distances, self.rel_dim, self.config.base).to(q.dtype))
        r = r.view(-1, h, dk)  # (L, H, K)
        content = torch.einsum("hd,bhsd->bhs", self.u.to(q.dtype), k)[:, :, None, :]  # (B, H, 1, Tk)
        by_distance = torch.einsum("bhqd,lhd->bhql", q + self.v.to(q.dtype)[:, None, :], r)  # (B, H, Tq, L)
        index = (rel - lo).expand(b, tq, -1)[:, None].expand(-1, h, -1, -1)  # (B, H, Tq, Tk)
        position = torch.gather(by_distance, -1, index)
        return (content + position) / math.sqrt(dk)
