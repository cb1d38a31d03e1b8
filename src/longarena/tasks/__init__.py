"""Seeded tasks and data: Long Range Arena (generators and local-file loaders), synthetic
recall tasks, long-context probes. Every task has a dataclass config, produces its splits
deterministically from its seed, and exposes torch datasets with a padding collate.

Tasks register with ``@register(name)``; ``names()`` lists them, ``get(name, **config)``
builds one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from longarena.config import build_config
from longarena.registry import Registry
from longarena.tasks.base import Task, TaskConfig

REGISTRY: Registry[type[Task]] = Registry("task", package=__name__)

__all__ = ["Task", "TaskConfig", "get", "names", "register", "summaries"]


def register(name: str) -> Callable[[type[Task]], type[Task]]:
    def decorator(cls: type[Task]) -> type[Task]:
        cls.registry_name = name
        return REGISTRY.register(name)(cls)

    return decorator


def names() -> list[str]:
    return REGISTRY.names()


def summaries() -> dict[str, str]:
    return REGISTRY.summaries()


def get(name: str, *, config: Any = None, **overrides: Any) -> Task:
    """Build task ``name`` from a config object/dict and keyword overrides."""
    cls = REGISTRY.factory(name)
    return cls(build_config(cls.config_class, config, overrides))
