"""Typed dataclass configs that round-trip to plain dicts (JSON/YAML friendly)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type."""


@dataclasses.dataclass
class Config:
    """Base for every component config: ``to_dict`` / ``from_dict`` and validation.

    Subclasses are plain dataclasses; override ``validate`` to check ranges and say what
    was expected.
    """

    def __post_init__(self) -> None:
        self.validate()  # first: a component's own message says more than the generic one
        for f in dataclasses.fields(self):
            _refuse_non_finite(getattr(self, f.name), f"{type(self).__name__}.{f.name}")

    def validate(self) -> None:
        """Raise ``ConfigError`` for values out of range. Default: nothing to check."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} expects a dict, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown field(s) {unknown} for {cls.__name__}; known fields: {sorted(fields)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            hint = hints.get(name)
            if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, dict):
                value = hint.from_dict(value)
            elif isinstance(value, (list, tuple)) and (tuple_hint := _tuple_hint(hint)) is not None:
                item = (typing.get_args(tuple_hint) or (None,))[0]
                if isinstance(item, type) and issubclass(item, Config):
                    value = [item.from_dict(v) if isinstance(v, dict) else v for v in value]
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def _refuse_non_finite(value: Any, name: str) -> None:
    """No config number may be inf or NaN (JSON and YAML can both write them): checked for
    every config at construction, since range checks such as ``lr > 0`` let inf through, to
    fail steps later in a traceback."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, float) and not math.isfinite(v) for v in value):
            raise ConfigError(f"{name} must be finite numbers, got {list(value)}")
        for v in value:
            _refuse_non_finite(v, name)
    elif isinstance(value, dict):
        for key, v in value.items():
            _refuse_non_finite(v, f"{name}.{key}")


def _tuple_hint(hint: Any) -> Any:
    """The ``tuple[...]`` in a hint such as ``tuple[int, ...]`` or ``tuple[float, ...] | None``."""
    if typing.get_origin(hint) is tuple or hint is tuple:
        return hint
    for arg in typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ():
        if typing.get_origin(arg) is tuple or arg is tuple:
            return arg
    return None


def _plain(value: Any) -> Any:
    """Configs, tuples and containers of them as JSON-ready dicts and lists."""
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def build_config(cls: type[C], config: C | dict[str, Any] | None, overrides: dict[str, Any]) -> C:
    """Build ``cls`` from an existing config, a dict, or keyword overrides (or a mix)."""
    if config is None:
        base: dict[str, Any] = {}
    elif isinstance(config, cls):
        base = config.to_dict()
    elif isinstance(config, dict):
        base = dict(config)
    else:
        raise ConfigError(f"expected a {cls.__name__} or a dict, got {type(config).__name__}")
    base.update(overrides)
    return cls.from_dict(base)


def read_mapping_file(path: str | os.PathLike, what: str, expected: str) -> dict[str, Any]:
    """The mapping held by a JSON (``.json``) or YAML (any other suffix) file.

    ``what`` names the file in errors ("suite file"); ``expected`` says what the mapping
    should hold. A missing file, a parse error (the parser's message carries the line) or a
    top level that is not a mapping raises :class:`ConfigError`; an empty file is ``{}``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        text = path.read_text()
        if kind == "JSON":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        raise ConfigError(f"{what} {path} is not valid {kind}: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a mapping with {expected}, got {type(data).__name__}")
    return data

