"""What ``longarena train`` does, kept out of ``cli/main.py``: layer the run config (defaults,
preset, file, ``--set``, options), check it, build the model and train."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from longarena.config import ConfigError, read_mapping_file
from longarena.train import configfile, presets
from longarena.train.checkpoint import ResumeError
from longarena.train.objective import TrainResult, model_for_task
from longarena.train.trainer import CONFIG_FILE, check_version, fit


def option_overrides(
    *,
    task: str | None = None,
    pattern: str | None = None,
    d_model: int | None = None,
    layers: int | None = None,
    task_config: list[str] | None = None,
    mixer_config: list[str] | None = None,
    **train: Any,
) -> dict[str, Any]:
    """The command's own options as a run-config overlay (only the options given)."""
    out: dict[str, Any] = {}
    if task is not None:
        out["task"] = task
    if task_config:
        out["task_config"] = configfile.parse_sets(task_config)
    model: dict[str, Any] = {}
    if pattern is not None:
        model["pattern"] = pattern
    if d_model is not None:
        model["d_model"] = d_model
    if layers is not None:
        model["n_layers"] = layers
    if mixer_config:
        model["mixer"] = configfile.parse_sets(mixer_config)
    if model:
        out["model"] = model
    given = {k: v for k, v in train.items() if v is not None}
    if given:
        out["train"] = given
    return out


def layered_config(
    *,
    preset: str | None,
    config_file: Path | None,
    sets: list[str] | None,
    options: dict[str, Any],
    out: Path | None,
    resume: bool,
) -> dict[str, Any]:
    """Defaults <- preset <- file <- ``--set`` <- options; resuming with neither a preset nor
    a file starts from the run folder's recorded config instead of the defaults."""
    if resume and out is None:
        raise ConfigError("--resume needs --out, the run folder to continue")
    if resume and preset is None and config_file is None:
        if not (out / CONFIG_FILE).is_file():
            raise ResumeError(f"nothing to resume in {out}: it has no {CONFIG_FILE}")
        check_version(read_mapping_file(out / CONFIG_FILE, "run config", "format_version and run"), out)
        raw = configfile.read_file(out / CONFIG_FILE)
    else:
        raw = configfile.defaults()
        if preset is not None:
            raw = configfile.merge(raw, presets.get(preset))
        if config_file is not None:
            raw = configfile.merge(raw, configfile.read_file(config_file))
    raw = configfile.merge(raw, configfile.parse_sets(sets))
    return configfile.merge(raw, options)


def run(raw: dict[str, Any], *, out: Path | None, resume: bool, tensorboard: bool, console: Any) -> tuple[configfile.ResolvedRun, TrainResult]:
    resolved = configfile.resolve(raw)
    torch.manual_seed(resolved.train.seed)  # the same seed gives the same initial weights
    model = model_for_task(resolved.task, resolved.model)
    description = f"{resolved.raw['task']}/{','.join(model.config.pattern)}"
    result = fit(
        model, resolved.task, resolved.train, run_dir=out, resume=resume, run_config=resolved.raw,
        progress=True, description=description, tensorboard=tensorboard, console=console,
    )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # a launched run ends its process group itself (NCCL warns of leaked resources otherwise),
        # once every process is done with it: a process that tore gloo down while another still
        # had work in flight was aborted ("terminate called without an active exception")
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return resolved, result


def is_main_process() -> bool:
    """Under ``accelerate launch`` only rank 0 prints."""
    return int(os.environ.get("RANK", "0")) == 0
