"""Checkpoints: ``config.json`` (registry name + config dict) and ``model.safetensors``.

Loading never unpickles: weights come from safetensors, the model is rebuilt from its
registered name and plain-dict config. Both files are written to a temporary folder that
is renamed into place, so an interrupted save leaves no partial checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import longarena
from longarena import models
from longarena.config import ConfigError, read_mapping_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint folder is missing files or does not match the model it should build."""


def _registry_name(model: nn.Module) -> str:
    for name in models.names():
        if type(model) is models.REGISTRY.factory(name):
            return name
    raise CheckpointError(
        f"{type(model).__name__} is not a registered model; register it with @longarena.models.register(name)"
    )


def save(model: nn.Module, path: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (a registered model with ``.config``) to the folder ``path``."""
    path = Path(path)
    meta = {
        "model": _registry_name(model),
        "config": model.config.to_dict(),
        "longarena_version": longarena.__version__,
        **(extra or {}),
    }
    # tied weights share storage, which safetensors refuses; each name gets its own copy
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load(path: str | os.PathLike, *, map_location: str | torch.device = "cpu", expect: str | None = None) -> nn.Module:
    """Rebuild the model saved in folder ``path``; ``expect`` checks its registry name."""
    path = Path(path)
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{path} is not a LongArena checkpoint: missing {', '.join(missing)}")
    try:
        meta = read_mapping_file(path / CONFIG_FILE, "checkpoint config", "model and config")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    name = meta.get("model")
    if expect is not None and name != expect:
        raise CheckpointError(f"{path} holds a {name!r} model, expected {expect!r}")
    try:
        model = models.get(name, config=meta["config"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild model {name!r} from its config: {exc}") from exc
    state = load_file(str(path / WEIGHTS_FILE), device=str(map_location))
    expected = model.state_dict()
    problems = []
    for key in sorted(set(expected) - set(state)):
        problems.append(f"missing weight {key} {tuple(expected[key].shape)}")
    for key in sorted(set(state) - set(expected)):
        problems.append(f"unexpected weight {key} {tuple(state[key].shape)}")
    for key in sorted(set(state) & set(expected)):
        if state[key].shape != expected[key].shape:
            problems.append(f"{key}: checkpoint has {tuple(state[key].shape)}, config expects {tuple(expected[key].shape)}")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(f"{path}: weights do not match config.json: {shown}")
    model.load_state_dict(state)
    return model.to(map_location)
