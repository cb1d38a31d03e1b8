"""ALiBi: attention with linear biases (Press et al. 2022).

No position embedding at all: head h adds ``-m_h * (i - j)`` to the score of query i and
key j (``-m_h * |i - j|`` in the symmetric form for bidirectional attention). The slopes are
a geometric sequence ``m_h = 2^(-8h/H)``, h = 1..H. For H not a power of two, take the H' =
2^floor(log2 H) slopes of H', then the slopes of 2H' with odd h (``2^(-4(2j-1)/H')``, the
ones that fall between them) until there are H.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from longarena.config import ConfigError
from longarena.positions.base import PositionConfig, PositionScheme, ScoreMod, register

MODES = ("causal", "symmetric")


@dataclasses.dataclass
class AlibiConfig(PositionConfig):
    #: "causal": -m (i - j), for causal attention (future keys are masked anyway);
    #: "symmetric": -m |i - j|, for bidirectional attention
    mode: str = "causal"

    def validate(self) -> None:
        super().validate()
        if self.mode not in MODES:
            raise ConfigError(f"ALiBi mode must be one of {list(MODES)}, got {self.mode!r}")


def alibi_slopes(n_heads: int) -> Tensor:
    """Per-head slopes (H,) float32."""
    if n_heads <= 0:
        raise ValueError(f"n_heads must be positive, got {n_heads}")

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    below = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = geometric(below) + geometric(2 * below)[0::2][: n_heads - below]
    return torch.tensor(slopes, dtype=torch.float64).float()


@register("alibi")
class Alibi(PositionScheme):
    """ALiBi: a per-head linear distance penalty on the scores (no embedding)."""

    config_class = AlibiConfig

    def __init__(self, config: AlibiConfig) -> None:
        super().__init__(config)
        self.register_buffer("slopes", alibi_slopes(config.n_heads), persistent=False)

    def _apply(self, fn, recurse=True):
        # keep the slopes float32 under module.to(bfloat16): the bias is m * distance
        slopes = self.slopes
        super()._apply(fn, recurse)
        self.slopes = slopes.to(self.slopes.device)
        return self

    def _distance(self, rel: Tensor) -> Tensor:
        return rel.abs() if self.config.mode == "symmetric" else rel

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """(H, Tq, Tk) for 1-d positions, (B, H, Tq, Tk) for (B, T) positions; float32."""
        rel = (q_pos[..., :, None] - k_pos[..., None, :]).to(torch.float32)  # (..., Tq, Tk)
        return -self.slopes[:, None, None] * self._distance(rel)[..., None, :, :]

    def score_mod(self, q_pos: Tensor, k_pos: Tensor) -> ScoreMod:
        slopes = self.slopes

        def alibi(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            rel = (q_pos[q_idx] - k_pos[kv_idx]).to(torch.float32)
            return score - slopes[h] * self._distance(rel)

        return alibi
