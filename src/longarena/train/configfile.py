"""Run configs as files: YAML or JSON with sections, command-line overrides, typed checks.

A run config is a plain dict with four sections::

    task: listops                 # a task name (longarena list tasks)
    task_config: {n_train: 2000}  # fields of that task's config
    model: {d_model: 128, n_layers: 4, pattern: [s4], mixer: {s4: {d_state: 64}}}
    train: {steps: 1000, lr: 3e-3, batch_size: 32}

``model`` holds the backbone's fields (``ModelConfig``, plus ``pooling`` for classifiers);
the vocabulary and class count come from the task. Layers are applied in order: defaults,
a preset, a file, then ``--set section.key=value`` and command-line options. Every key is
checked against the dataclass it ends up in, so a typo or a wrong type names its path
(``train.lrr: unknown key; known: ...``) before anything is built.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from longarena import mixers, tasks
from longarena.config import ConfigError, read_mapping_file
from longarena.models.backbone import CLASSIFIER_ONLY, ClassifierConfig
from longarena.train.objective import TrainConfig

#: bump when the run folder layout changes; resuming a folder of another version is refused
FORMAT_VERSION = 1
SECTIONS = ("task", "task_config", "model", "train")
#: fields the task decides, not the user
TASK_OWNED = ("vocab_size", "num_classes")
#: keys that must match to resume a run (besides every task and model key)
RESUME_TRAIN_KEYS = ("batch_size", "seed")


def defaults() -> dict[str, Any]:
    """The run ``longarena train`` makes with no options (the command's historical defaults)."""
    return {
        "task": "associative_recall",
        "task_config": {},
        "model": {"d_model": 64, "n_layers": 2, "pattern": ["attention"]},
        "train": {},
    }


def read_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON run config; a run folder's ``config.json`` gives the run it recorded."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    data = read_mapping_file(path, "config file", f"sections {', '.join(SECTIONS)}")
    if "format_version" in data and "run" in data:
        return data["run"]
    return data


def parse_value(text: str) -> Any:
    """``--set`` values: JSON (numbers, lists, true/false/null), else YAML flow, else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        import yaml

        value = yaml.safe_load(text)
        return text if value is None else value
    except Exception:
        return text


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    """``["train.lr=3e-4", "model.mixer.s4.d_state=32"]`` -> nested dict."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set entries look like section.key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        *parents, leaf = key.strip().split(".")
        node = out
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {p} is already set to a value, not a section")
            node = child
        node[leaf] = parse_value(value)
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base``, section by section.

    A new ``task`` starts from an empty ``task_config`` (the old task's fields would not
    fit it), and a new ``model.pattern`` drops the base's overrides of mixers it no longer
    uses, so ``--set model.pattern=[mamba]`` over an S4 preset just works.
    """
    out = copy.deepcopy(base)
    if "task" in override and override["task"] != out.get("task"):
        out["task_config"] = {}
    out = _deep_merge(out, override)
    new_model = override.get("model") if isinstance(override.get("model"), dict) else {}
    if "pattern" in new_model and isinstance(out.get("model", {}).get("mixer"), dict):
        pattern = new_model["pattern"]
        used = {p.strip() for p in (pattern.split(",") if isinstance(pattern, str) else pattern or [])}
        kept = set((new_model.get("mixer") or {}).keys()) | used
        out["model"]["mixer"] = {k: v for k, v in out["model"]["mixer"].items() if k in kept}
    return out


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint``; numbers widen (int -> float), YAML's
    unquoted ``3e-4`` (a string in YAML 1.1) becomes a float, a pattern may be one string."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is None:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple or hint is tuple:
        args = typing.get_args(hint)
        item = args[0] if args else Any
        if isinstance(value, str) and item is str:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
    elif origin is list or hint is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    else:
        return value
    raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")


def check_fields(cls: type, data: Any, where: str, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """``data`` with every key a field of dataclass ``cls`` and every value of its type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = sorted(f.name for f in dataclasses.fields(cls) if f.name not in exclude)
    out = {}
    for key, value in data.items():
        if key in exclude:
            raise ConfigError(f"{where}.{key}: set by the task, not the config; remove it")
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key; known: {', '.join(known)}")
        out[key] = coerce(value, hints.get(key, Any), f"{where}.{key}")
    return out


@dataclasses.dataclass
class ResolvedRun:
    """A checked run config: the plain dict (as written to ``config.json``) and its parts."""

    raw: dict[str, Any]
    task: tasks.Task
    model: dict[str, Any]
    train: TrainConfig


def resolve(raw: dict[str, Any]) -> ResolvedRun:
    """Check every section of ``raw`` and build the task and the train config."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section; known: {', '.join(SECTIONS)}")
    task_name = raw.get("task")
    if not isinstance(task_name, str):
        raise ConfigError(f"task: expected a task name, got {task_name!r}")
    if task_name not in tasks.names():
        raise ConfigError(f"task: unknown task {task_name!r}; known tasks: {', '.join(tasks.names())}")
    task_cls = tasks.REGISTRY.factory(task_name)
    task_config = check_fields(task_cls.config_class, raw.get("task_config") or {}, "task_config")
    model = check_fields(ClassifierConfig, raw.get("model") or {}, "model", exclude=TASK_OWNED)
    mixer_overrides = {}
    for name, fields in (model.get("mixer") or {}).items():
        if name not in mixers.names():
            raise ConfigError(f"model.mixer.{name}: unknown mixer; known mixers: {', '.join(mixers.names())}")
        cls = mixers.REGISTRY.factory(name).config_class
        mixer_overrides[name] = check_fields(cls, fields, f"model.mixer.{name}", exclude=("d_model",))
    if "mixer" in model:
        model["mixer"] = mixer_overrides
    train = check_fields(TrainConfig, raw.get("train") or {}, "train")
    try:
        task = tasks.get(task_name, **task_config)
    except ConfigError as exc:
        raise ConfigError(f"task_config: {exc}") from exc
    try:
        train_config = TrainConfig.from_dict(train)
    except ConfigError as exc:
        raise ConfigError(f"train: {exc}") from exc
    for key in CLASSIFIER_ONLY:
        if task.kind == "lm" and key in model:
            raise ConfigError(f"model.{key}: {task_name} is a language-modelling task; {key} is for classifiers")
    try:
        built = ClassifierConfig.from_dict({**model, "vocab_size": task.vocab_size, "num_classes": task.num_classes or 2})
    except ConfigError as exc:
        raise ConfigError(f"model: {exc}") from exc
    # every field written out, so config.json is the whole model and a later default change
    # cannot silently alter a resumed run
    model = {k: v for k, v in built.to_dict().items() if k not in TASK_OWNED}
    if task.kind == "lm":
        for key in CLASSIFIER_ONLY:
            model.pop(key, None)
    clean = {"task": task_name, "task_config": task.config.to_dict(), "model": model, "train": train_config.to_dict()}
    return ResolvedRun(raw=clean, task=task, model=model, train=train_config)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _saved_with_defaults(saved: dict[str, Any], new_flat: dict[str, Any]) -> dict[str, Any]:
    """``saved`` flattened, where a model field added after the run was saved (absent from
    it) reads as its default: the run was built with the behaviour that default keeps."""
    a = _flatten(saved)
    for field in dataclasses.fields(ClassifierConfig):
        key = f"model.{field.name}"
        if key not in a and key in new_flat and field.default is not dataclasses.MISSING:
            a[key] = field.default
    return a


def resume_conflicts(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys (dotted paths) whose change makes resuming meaningless: the task and its data,
    the model's shape and mixers, and the batch size and seed that fix the data order."""
    b = _flatten(new)
    a = _saved_with_defaults(saved, b)
    keys = sorted(set(a) | set(b))
    watched = [k for k in keys if k == "task" or k.startswith(("task_config.", "model."))]
    watched += [f"train.{k}" for k in RESUME_TRAIN_KEYS]
    return [k for k in watched if a.get(k) != b.get(k)]


def changed_keys(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    b = _flatten(new)
    a = _saved_with_defaults(saved, b)
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
