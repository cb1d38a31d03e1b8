"""Position schemes: absolute, rotary and its context-extension scalings, score biases.

Each scheme is an ``nn.Module`` with a dataclass config (see :mod:`.base`): it may rotate
queries/keys (RoPE family) or add a bias to attention scores (ALiBi, T5). Attention-like
mixers take a scheme by name (``position="rope"``) plus its parameters. Schemes register
with ``@register(name)``; ``names()`` lists them and ``get(name, head_dim=, n_heads=, ...)``
builds one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from longarena.config import build_config
from longarena.positions.base import PositionConfig, PositionScheme
from longarena.registry import Registry

REGISTRY: Registry[type[PositionScheme]] = Registry("position scheme", package=__name__)

__all__ = ["PositionConfig", "PositionScheme", "get", "names", "register", "summaries"]


def register(name: str) -> Callable[[type[PositionScheme]], type[PositionScheme]]:
    return REGISTRY.register(name)


def names() -> list[str]:
    return REGISTRY.names()


def summaries() -> dict[str, str]:
    return REGISTRY.summaries()


def get(name: str, *, config: dict[str, Any] | None = None, **overrides: Any) -> PositionScheme:
    """Build scheme ``name``; ``head_dim`` / ``n_heads`` come from the mixer using it."""
    cls = REGISTRY.factory(name)
    return cls(build_config(cls.config_class, config, overrides))
