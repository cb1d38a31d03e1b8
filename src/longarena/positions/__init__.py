"""Position schemes: absolute, rotary and its context-extension scalings, score biases.

Each scheme is an ``nn.Module`` with a dataclass config (see :mod:`.base`): it may rotate
queries/keys (RoPE family) or add a bias to attention scores (ALiBi, T5). Attention-like
mixers take a scheme by name (``position="rope"``) plus its parameters. Schemes register
with ``@register(name)``; ``names()`` lists them and ``get(name, head_dim=, n_heads=, ...)``
builds one.

``extend(model, method, factor, **params)`` patches a trained RoPE model (Hugging Face or
LongArena) to a longer context; ``extend_checkpoint`` does it folder to folder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from longarena.config import build_config
from longarena.positions.base import PositionConfig, PositionScheme
from longarena.registry import Registry

REGISTRY: Registry[type[PositionScheme]] = Registry("position scheme", package=__name__)

__all__ = [
    "PositionConfig",
    "PositionScheme",
    "extend",
    "extend_checkpoint",
    "get",
    "names",
    "register",
    "summaries",
]


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


# last: extend.py imports schemes that register themselves through ``register`` above. The
# function ``extend`` deliberately shadows the submodule of the same name as a package
# attribute; import the module's other names with ``from longarena.positions.extend import ...``.
from longarena.positions.extend import extend, extend_checkpoint  # noqa: E402
