"""The position-scheme interface attention-like mixers call."""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from longarena.config import Config, ConfigError


@dataclasses.dataclass
class PositionConfig(Config):
    """Fields every scheme receives from the mixer that uses it."""

    head_dim: int = 64
    n_heads: int = 1

    def validate(self) -> None:
        if self.head_dim <= 0 or self.n_heads <= 0:
            raise ConfigError(f"head_dim and n_heads must be positive, got {self.head_dim}, {self.n_heads}")


class PositionScheme(nn.Module):
    """How an attention layer learns where tokens are.

    A scheme may rotate queries and keys (``rotate``, RoPE-like) and/or add a bias to the
    attention scores (``bias``, ALiBi/T5-like). Positions are absolute token indices, so a
    KV cache, chunked prefill and packed sequences all work: keys are rotated once, at
    their own positions, when they are written to the cache.
    """

    config_class: type[PositionConfig] = PositionConfig

    def __init__(self, config: PositionConfig) -> None:
        super().__init__()
        self.config = config

    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (B, H, T, K), positions: (T,) or (B, T) int -> x with positions applied."""
        return x

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Additive score bias broadcastable to (B, H, Tq, Tk), or None."""
        return None
