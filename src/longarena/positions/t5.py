"""T5 relative position bias (Raffel et al. 2020): one learned scalar per (bucket, head).

The signed distance ``k - q`` is put into ``num_buckets`` buckets: distances below
``num_buckets / 2`` (per direction) each get their own bucket, larger ones share
logarithmically wider buckets up to ``max_distance``, beyond which all share the last. In the
``bidirectional`` mode half of the buckets are for keys after the query; in ``causal`` mode
all buckets are for keys at or before it (later keys fall into bucket 0, and are masked).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from longarena.config import ConfigError
from longarena.positions.base import PositionConfig, PositionScheme, ScoreMod, register

MODES = ("causal", "bidirectional")


@dataclasses.dataclass
class T5BiasConfig(PositionConfig):
    num_buckets: int = 32
    max_distance: int = 128
    mode: str = "causal"
    #: std of the normal initialisation of the bias table
    init_std: float = 0.02

    def validate(self) -> None:
        super().validate()
        if self.mode not in MODES:
            raise ConfigError(f"T5 bias mode must be one of {list(MODES)}, got {self.mode!r}")
        per_side = self.num_buckets // 2 if self.mode == "bidirectional" else self.num_buckets
        if per_side < 2:
            raise ConfigError(
                f"T5 bias needs at least 2 buckets per direction, "
                f"got num_buckets={self.num_buckets} ({self.mode})"
            )
        if self.max_distance <= per_side // 2:
            raise ConfigError(
                f"max_distance ({self.max_distance}) must exceed the exact range ({per_side // 2} buckets)"
            )
        if self.init_std < 0:
            raise ConfigError(f"init_std must be >= 0, got {self.init_std}")


def t5_bucket(rel: Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int) -> Tensor:
    """Bucket index (same shape, int64) of each signed distance ``rel = k_pos - q_pos``."""
    rel = rel.long()
    if bidirectional:
        num_buckets //= 2
        offset = (rel > 0).long() * num_buckets
        dist = rel.abs()
    else:
        offset = torch.zeros_like(rel)
        dist = torch.clamp(-rel, min=0)
    max_exact = num_buckets // 2
    # log-spaced buckets: distance max_exact maps to max_exact, max_distance to num_buckets.
    # float32, as in T5 itself: at distances where the log is a whole number of buckets, the
    # rounding decides the bucket, and pretrained T5 tables were learned with this rounding.
    log_ratio = torch.log(dist.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return offset + torch.where(dist < max_exact, dist, large)


@register("t5")
class T5Bias(PositionScheme):
    """T5 bucketed relative position bias, learned per head."""

    config_class = T5BiasConfig

    def __init__(self, config: T5BiasConfig) -> None:
        super().__init__(config)
        self.table = nn.Parameter(torch.randn(config.num_buckets, config.n_heads) * config.init_std)

    def buckets(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """(..., Tq, Tk) bucket indices."""
        c = self.config
        rel = k_pos[..., None, :] - q_pos[..., :, None]
        two_sided = c.mode == "bidirectional"
        return t5_bucket(rel, bidirectional=two_sided, num_buckets=c.num_buckets, max_distance=c.max_distance)

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """(H, Tq, Tk) for 1-d positions, (B, H, Tq, Tk) for (B, T) positions."""
        return self.table[self.buckets(q_pos, k_pos)].movedim(-1, -3)

    def score_mod(self, q_pos: Tensor, k_pos: Tensor) -> ScoreMod:
        buckets = self.buckets(q_pos, k_pos)  # (Tq, Tk): flex indexes it per (q, kv) pair
        table = self.table

        def t5(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return score + table[buckets[q_idx, kv_idx], h]

        return t5
