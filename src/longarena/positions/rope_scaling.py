"""Context extension of RoPE: the model trained on ``original_max_len`` positions is run on
``factor`` times more by changing its frequencies ``w_i = theta^(-2i/K)``.

- ``linear`` (Position Interpolation, Chen et al. 2023): ``w_i / s``. Positions are squeezed
  into the trained range; every frequency, even the fastest, is slowed down.
- ``ntk`` (NTK-aware, bloc97 2023): the base grows to ``theta * s^(K/(K-2))``. The fastest
  pair (i = 0) is untouched and the slowest (i = K/2 - 1) is slowed by exactly ``s``, so
  local order stays sharp while long range is interpolated.
- ``dynamic_ntk`` (emozilla 2023): NTK-aware with ``s = max(1, factor * L / L0 - (factor - 1))``
  where ``L`` is the current sequence length (max position + 1): no change within the
  trained length ``L0``, then a base that grows with the input.
- ``yarn`` (Peng et al. 2023): per frequency, by its wavelength ``lambda_i = 2 pi / w_i``:
  pairs that turn more than ``beta_fast`` times over ``L0`` keep ``w_i`` (extrapolate), those
  turning fewer than ``beta_slow`` times use ``w_i / s`` (interpolate), with a linear ramp in
  between; plus a temperature: q and k are scaled by ``0.1 ln s + 1`` each.

All four reduce to plain RoPE, bit for bit, at ``factor = 1`` (dynamic NTK: within the trained
length, see its class). The frequencies match transformers' ``ROPE_INIT_FUNCTIONS``
(``linear``, ``dynamic``, ``yarn``; static NTK is its ``dynamic`` at ``seq_len = factor * L0``
with factor 1) to float32 rounding; the tests check it.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from longarena.config import ConfigError
from longarena.positions.base import register
from longarena.positions.rope import Rope, RopeConfig, apply_rotary, rope_inv_freq


@dataclasses.dataclass
class ScaledRopeConfig(RopeConfig):
    #: context extension factor s >= 1 (1 = plain RoPE)
    factor: float = 1.0

    def validate(self) -> None:
        super().validate()
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or not self.factor >= 1:
            raise ConfigError(
                f"{type(self).__name__}.factor must be a number >= 1 (1 = plain RoPE), got {self.factor!r}"
            )


@dataclasses.dataclass
class LengthScaledRopeConfig(ScaledRopeConfig):
    #: context length the model was trained on, L0
    original_max_len: int = 2048

    def validate(self) -> None:
        super().validate()
        n = self.original_max_len
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ConfigError(f"original_max_len must be a positive int, got {self.original_max_len!r}")


@dataclasses.dataclass
class YarnConfig(LengthScaledRopeConfig):
    #: pairs turning more than beta_fast times over original_max_len are kept as they are
    beta_fast: float = 32.0
    #: pairs turning fewer than beta_slow times are interpolated by factor
    beta_slow: float = 1.0
    #: scale of q and k; None = 0.1 ln(factor) + 1 (the paper's temperature sqrt(1/t))
    attention_factor: float | None = None
    #: round the ramp's ends to whole dimensions (as the reference implementation does)
    truncate: bool = True

    def validate(self) -> None:
        super().validate()
        if not (self.beta_fast > self.beta_slow > 0):
            raise ConfigError(
                f"YaRN needs beta_fast > beta_slow > 0, "
                f"got beta_fast={self.beta_fast}, beta_slow={self.beta_slow}"
            )
        if self.attention_factor is not None and not self.attention_factor > 0:
            raise ConfigError(f"YaRN attention_factor must be > 0 or None, got {self.attention_factor}")


def linear_inv_freq(head_dim: int, theta: float, factor: float) -> Tensor:
    """Position Interpolation: every frequency divided by ``factor``. (K/2,)"""
    return rope_inv_freq(head_dim, theta) / factor


def ntk_theta(head_dim: int, theta: float | Tensor, scale: float | Tensor) -> float | Tensor:
    """NTK-aware base ``theta * s^(K/(K-2))``: the slowest pair slows by exactly ``s``."""
    return theta * scale ** (head_dim / (head_dim - 2))


def dynamic_ntk_scale(factor: float, seq_len: Tensor | int, original_max_len: int) -> Tensor:
    """``max(1, factor * L / L0 - (factor - 1))`` as a float64 tensor (0-d)."""
    seq_len = torch.as_tensor(seq_len, dtype=torch.float64)
    return torch.clamp(factor * seq_len / original_max_len - (factor - 1), min=1.0)


def yarn_attention_factor(factor: float) -> float:
    """YaRN's q/k scale ``0.1 ln s + 1`` (scores scale by its square)."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def yarn_ramp(
    head_dim: int, theta: float, original_max_len: int, beta_fast: float, beta_slow: float, truncate: bool
) -> Tensor:
    """Weight of the *extrapolated* (original) frequency per pair, float64 (K/2,).

    Pair i turns ``L0 w_i / (2 pi)`` times over the trained length; solving for the
    dimension at which that equals ``beta`` gives ``d(beta) = K ln(L0 / (2 pi beta)) / (2 ln theta)``.
    Pairs below ``d(beta_fast)`` get weight 1, above ``d(beta_slow)`` weight 0, linear between.
    """

    def dim_of(rotations: float) -> float:
        return head_dim * math.log(original_max_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 1e-3  # a step instead of a ramp; avoids dividing by zero
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    return 1.0 - torch.clamp((i - low) / (high - low), 0.0, 1.0)


def yarn_inv_freq(
    head_dim: int,
    theta: float,
    factor: float,
    original_max_len: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
) -> Tensor:
    """YaRN frequencies (K/2,): a per-pair blend of ``w_i`` and ``w_i / factor``."""
    extrapolated = rope_inv_freq(head_dim, theta).double()
    interpolated = extrapolated / factor
    keep = yarn_ramp(head_dim, theta, original_max_len, beta_fast, beta_slow, truncate)
    # lerp: with factor 1 both ends are the same number, so the result is exactly plain RoPE
    return torch.lerp(interpolated, extrapolated, keep).float()


@register("linear")
class LinearRope(Rope):
    """RoPE with Position Interpolation: frequencies divided by ``factor``."""

    config_class = ScaledRopeConfig

    def frequencies(self) -> tuple[Tensor, float]:
        c = self.config
        return linear_inv_freq(c.head_dim, c.theta, c.factor), 1.0


@register("ntk")
class NtkRope(Rope):
    """NTK-aware RoPE: base theta raised to ``theta * factor^(K/(K-2))``."""

    config_class = ScaledRopeConfig

    def frequencies(self) -> tuple[Tensor, float]:
        c = self.config
        return rope_inv_freq(c.head_dim, ntk_theta(c.head_dim, c.theta, c.factor)), 1.0


@register("dynamic_ntk")
class DynamicNtkRope(Rope):
    """NTK-aware RoPE whose base grows with the current length beyond ``original_max_len``.

    The length is ``max(positions) + 1`` of each ``rotate`` call. With a KV cache, keys
    written earlier keep the frequencies of their own call, as in transformers' dynamic
    RoPE; so once the input outgrows ``original_max_len``, chunked processing and one
    whole-sequence call differ (within the trained length they are identical). Note that
    the scale depends on the length, not only on ``factor``: at factor 1 it is plain RoPE up to
    ``original_max_len`` and ``L / L0``-scaled NTK beyond, exactly as transformers defines it.
    """

    config_class = LengthScaledRopeConfig

    def inv_freq_for(self, seq_len: Tensor | int) -> Tensor:
        """Frequencies (K/2,) for a sequence of ``seq_len`` tokens."""
        c = self.config
        scale = dynamic_ntk_scale(c.factor, seq_len, c.original_max_len)
        return rope_inv_freq(c.head_dim, ntk_theta(c.head_dim, c.theta, scale))

    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        inv_freq = self.inv_freq_for(positions.max().to(torch.float64) + 1)
        return apply_rotary(x, positions, inv_freq)


@register("yarn")
class YarnRope(Rope):
    """YaRN: per-frequency blend of extrapolation and interpolation, plus attention temperature."""

    config_class = YarnConfig

    def frequencies(self) -> tuple[Tensor, float]:
        c = self.config
        inv_freq = yarn_inv_freq(
            c.head_dim, c.theta, c.factor, c.original_max_len, c.beta_fast, c.beta_slow, c.truncate
        )
        scale = c.attention_factor if c.attention_factor is not None else yarn_attention_factor(c.factor)
        return inv_freq, float(scale)
