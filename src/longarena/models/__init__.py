"""Models built from mixers: the generic backbone (a per-layer mixer pattern, hybrids
allowed) with causal-LM, sequence-classifier and dual-encoder heads; whole-model methods
that are more than a mixer (Perceiver); checkpoints as safetensors + config JSON; Hugging
Face integration.

Model classes register with ``@register(name)``; ``names()`` lists them and
``get(name, **config)`` builds one from its dataclass config. The segment-memory models
live in :mod:`longarena.memory`, a layer above, and register here from there; discovery
imports that package too (the package root declares it), so ``names()`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from longarena.config import build_config
from longarena.registry import Registry

REGISTRY: Registry[Any] = Registry("model", package=__name__)


def register(name: str) -> Callable[[Any], Any]:
    """Class decorator for a model with a ``config_class`` attribute."""
    return REGISTRY.register(name)


def names() -> list[str]:
    return REGISTRY.names()


def summaries() -> dict[str, str]:
    return REGISTRY.summaries()


def get(name: str, *, config: Any = None, **overrides: Any) -> Any:
    """Build model ``name`` from a config object/dict and keyword overrides."""
    cls = REGISTRY.factory(name)
    return cls(build_config(cls.config_class, config, overrides))
