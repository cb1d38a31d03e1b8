"""A small name -> factory registry shared by mixers, positions, tasks, evals and models.

Registries are filled by decorators at import time. Each subpackage imports all of its
modules on first use (``Registry.discover``), so adding a component is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a registry is asked for a name it does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


# registry package -> higher packages that also register into it (see ``contribute``)
_CONTRIBUTORS: dict[str, list[str]] = {}


def contribute(package: str, contributor: str) -> None:
    """Let discovery of the registry of ``package`` also import package ``contributor``.

    For a higher layer that registers components into a lower layer's registry (memory/
    registers models): the lower package must not import it, so the package root, which
    sits above every layer, declares it, and nothing is imported before a name is looked up.
    """
    contributors = _CONTRIBUTORS.setdefault(package, [])
    if contributor not in contributors:
        contributors.append(contributor)


class Registry(Generic[T]):
    """Maps names to factories, with a one-line summary for ``longarena list``.

    ``package`` names the package whose modules register into this registry; they are
    imported the first time a name is looked up, and so are the packages that
    ``contribute`` names for it.
    """

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, tuple[Callable[..., T], str]] = {}
        self._discovered = package is None

    def register(self, name: str, summary: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and self._entries[name][0] is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            text = summary or (factory.__doc__ or "").strip().splitlines()[0:1]
            if isinstance(text, list):
                text = text[0] if text else ""
            self._entries[name] = (factory, text)
            return factory

        return decorator

    def discover(self) -> None:
        if self._discovered:
            return
        pkg = importlib.import_module(self.package)
        own = [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
        modules = [f"{self.package}.{name}" for name in own]
        for module in modules + _CONTRIBUTORS.get(self.package, []):
            try:
                importlib.import_module(module)
            except Exception as exc:
                # stay undiscovered: a later lookup retries instead of seeing a partial registry
                raise ImportError(f"cannot register the {self.kind}s of {module}: {type(exc).__name__}: {exc}") from exc
        self._discovered = True

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def summaries(self) -> dict[str, str]:
        self.discover()
        return {name: self._entries[name][1] for name in sorted(self._entries)}

    def factory(self, name: str) -> Callable[..., T]:
        self.discover()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}")
        return self._entries[name][0]

    def get(self, name: str, *args: Any, **config: Any) -> T:
        return self.factory(name)(*args, **config)

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._entries
