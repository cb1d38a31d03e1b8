"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a folder:

- ``model.safetensors``: the weights;
- ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's tensors (moments, step
  counts) by parameter index, and its param groups and any non-tensor state;
- ``rng.safetensors`` + ``rng.json``: the torch CPU and CUDA generators and Python's and
  NumPy's, one set per process;
- ``state.json``: the step, the data position (epoch, next batch within the epoch) and
  the number of processes, written last.

Nothing is pickled. A checkpoint is written to a temporary folder that is renamed into
place, so a run killed mid-save keeps its previous checkpoint. The newest is
``checkpoint/``; older ones kept are ``checkpoint-<step>/``.

A run sharded with FSDP writes the same files: its model and optimizer states are
gathered into full (unsharded) state dicts first (``gather_sharded``), and its optimizer
state is keyed by parameter index like any other, so a checkpoint does not record how
the run was distributed and resumes under FSDP, DDP or one process alike.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

LATEST = "checkpoint"
STATE_FILE = "state.json"
_OLDER = re.compile(r"^checkpoint-(\d+)$")


class ResumeError(ValueError):
    """A run folder or checkpoint cannot be resumed from."""


def tensors_for_saving(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies: tied weights share storage, which safetensors refuses."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def rng_state() -> dict[str, Any]:
    """This process's random generators (Python, NumPy, torch CPU, every CUDA device)."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def _optimizer_files(optimizer_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in optimizer_state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{pid}/{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors_for_saving(tensors), {"param_groups": optimizer_state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split("/", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, entry in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def save(
    run_dir: Path,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    position: dict[str, int],
    keep: int = 1,
) -> Path:
    """Write a checkpoint as ``run_dir/checkpoint`` (atomically); keep the newest ``keep``."""
    run_dir = Path(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=run_dir))
    try:
        save_file(tensors_for_saving(model_state), str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _optimizer_files(optimizer_state)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        rng_tensors = {}
        for rank, rng in enumerate(rng_states):
            rng_tensors[f"rank{rank}/torch"] = rng["torch"]
            for i, s in enumerate(rng["cuda"]):
                rng_tensors[f"rank{rank}/cuda{i}"] = s
        save_file(tensors_for_saving(rng_tensors), str(tmp / "rng.safetensors"))
        (tmp / "rng.json").write_text(json.dumps([{"python": r["python"], "numpy": r["numpy"]} for r in rng_states]))
        (tmp / STATE_FILE).write_text(json.dumps({**position, "processes": len(rng_states)}))
        latest = run_dir / LATEST
        if latest.exists():
            previous = _step_of(latest)
            if keep > 1 and previous is not None:
                os.replace(latest, run_dir / f"{LATEST}-{previous:08d}")
            else:
                shutil.rmtree(latest)
        os.replace(tmp, latest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    older = sorted(_older(run_dir), key=lambda p: _step_of(p) or -1)
    for path in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(path, ignore_errors=True)
    return latest


def _step_of(path: Path) -> int | None:
    try:
        return int(json.loads((path / STATE_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _older(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.is_dir() and _OLDER.match(p.name)]


def latest(run_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step in ``run_dir`` (None if there is none).

    Between the two renames of a save there is an instant with no ``checkpoint/``; a run
    killed then resumes from the newest ``checkpoint-<step>/``.
    """
    run_dir = Path(run_dir)
    candidates = [p for p in [run_dir / LATEST, *(_older(run_dir) if run_dir.is_dir() else [])] if p.is_dir()]
    steps = [(s, p) for p in candidates if (s := _step_of(p)) is not None]
    return max(steps, key=lambda sp: sp[0])[1] if steps else None


def clean_partial(run_dir: Path) -> None:
    """Remove temporary folders left by a save that was killed."""
    for p in Path(run_dir).glob(".checkpoint.*"):
        shutil.rmtree(p, ignore_errors=True)


def load(path: Path, rank: int = 0) -> dict[str, Any]:
    """A checkpoint's contents: model and optimizer state dicts, this rank's RNG, position."""
    path = Path(path)
    missing = [f for f in ("model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "rng.json", STATE_FILE) if not (path / f).is_file()]
    if missing:
        raise ResumeError(f"{path} is not a complete training checkpoint: missing {', '.join(missing)}")
    position = json.loads((path / STATE_FILE).read_text())
    rngs = json.loads((path / "rng.json").read_text())
    rng_tensors = load_file(str(path / "rng.safetensors"))
    # a run resumed on a different number of processes: ranks beyond the saved ones reuse
    # rank 0's generators (the data order does not depend on them, only dropout does)
    r = rank if rank < len(rngs) else 0
    cuda = [rng_tensors[k] for k in sorted((k for k in rng_tensors if k.startswith(f"rank{r}/cuda")), key=lambda k: int(k.rsplit("cuda", 1)[1]))]
    return {
        "model": load_file(str(path / "model.safetensors")),
        "optimizer": _optimizer_state(load_file(str(path / "optimizer.safetensors")), json.loads((path / "optimizer.json").read_text())),
        "rng": {"python": rngs[r]["python"], "numpy": rngs[r]["numpy"], "torch": rng_tensors[f"rank{r}/torch"], "cuda": cuda},
        "position": position,
    }


def optimizer_state_by_index(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict keyed by parameter name (``torch.distributed.checkpoint``'s layout) in
    ``torch.optim.Optimizer.state_dict``'s layout: parameters numbered in group order."""
    index = {name: i for i, name in enumerate(n for g in state["param_groups"] for n in g["params"])}
    return {
        "state": {index[name]: entry for name, entry in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def optimizer_state_by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of ``optimizer_state_by_index``: ``names[i]`` is parameter ``i``'s name."""
    count = sum(len(g["params"]) for g in state["param_groups"])
    if count != len(names):
        raise ResumeError(f"the checkpoint's optimizer holds {count} parameters, the model {len(names)}")
    return {
        "state": {names[int(i)]: entry for i, entry in state["state"].items()},
        "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]],
    }


def _full_options(**kwargs: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def gather_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full model and optimizer state dicts of an FSDP-sharded model, on the CPU of rank 0.

    A collective: every process must call it. Rank 0 gets the states (optimizer keyed by
    parameter index, as ``save`` expects); the other ranks get empty ones.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    options = _full_options(cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
    if not optimizer_state:  # not rank 0
        return {}, {}
    return model_state, optimizer_state_by_index(optimizer_state)


def load_sharded_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], names: list[str]) -> None:
    """Load a full optimizer state (``load``'s, keyed by index) into the optimizer of an
    FSDP-sharded ``model``; each process keeps its own shard. ``names`` are the parameter
    names in the optimizer's order."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optimizer_state_by_name(state, names), options=_full_options())
