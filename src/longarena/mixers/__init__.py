"""Sequence mixers: ``nn.Module`` s that honour the Mixer protocol, one file per method.

A mixer maps ``x: (B, T, D)`` to ``(y: (B, T, D), state)``; see :mod:`longarena.mixers.base`.
Each file registers its class with ``@register("name")``; ``get(name, d_model, **config)``
builds one with every other config field at its default, and ``names()`` lists them.
Adding a method is adding one file here (it is picked up automatically) and one test
that runs :func:`longarena.testing.check_mixer` on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from longarena.config import Config, build_config
from longarena.mixers.base import Mixer, MixerConfig, MixerInputError, flatten_state
from longarena.registry import Registry, UnknownNameError

REGISTRY: Registry[type[Mixer]] = Registry("mixer", package=__name__)

__all__ = [
    "Mixer",
    "MixerConfig",
    "MixerInputError",
    "UnknownNameError",
    "config_class",
    "flatten_state",
    "get",
    "is_causal",
    "names",
    "register",
    "summaries",
]


def register(name: str) -> Callable[[type[Mixer]], type[Mixer]]:
    """Class decorator: ``@register("mamba") class Mamba(Mixer): ...``."""

    def decorator(cls: type[Mixer]) -> type[Mixer]:
        cls.registry_name = name
        return REGISTRY.register(name)(cls)

    return decorator


def names() -> list[str]:
    """Registered mixer names, sorted."""
    return REGISTRY.names()


def summaries() -> dict[str, str]:
    """Name -> one-line description (the first line of each class docstring)."""
    return REGISTRY.summaries()


def config_class(name: str) -> type[MixerConfig]:
    """The dataclass config type of mixer ``name``."""
    return REGISTRY.factory(name).config_class


def make_config(name: str, d_model: int | None = None, config: Config | dict[str, Any] | None = None, **overrides: Any) -> MixerConfig:
    """The config of mixer ``name`` from a config object/dict and keyword overrides."""
    if d_model is not None:
        overrides["d_model"] = d_model
    return build_config(config_class(name), config, overrides)


def get(name: str, d_model: int | None = None, *, config: Config | dict[str, Any] | None = None, **overrides: Any) -> Mixer:
    """Build mixer ``name`` of width ``d_model``; any other config field may be overridden."""
    cls = REGISTRY.factory(name)
    return cls(make_config(name, d_model, config, **overrides))


def is_causal(name: str, **overrides: Any) -> bool:
    """Whether mixer ``name`` with these config overrides is causal (builds a small one)."""
    return bool(get(name, overrides.pop("d_model", 64), **overrides).causal)
