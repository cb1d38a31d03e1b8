"""No position information (NoPE): causal masking alone orders the tokens."""

from __future__ import annotations

from longarena.positions.base import PositionScheme, register


@register("none")
class NoPosition(PositionScheme):
    """No positional signal (NoPE); causal attention still sees order through its mask."""
