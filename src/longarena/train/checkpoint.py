"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a folder:

- ``model.safetensors``: the weights;
- ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's tensors (moments, step
  counts) by parameter index, and its param groups and any non-tensor state;
- ``rng.safetensors`` + ``rng.json``: the torch CPU and CUDA generators and Python's and
  NumPy's, one set per process;
- ``state.json``: the step, the data position (epoch, next batch within the epoch) and
  the number of processes;
- ``manifest.json``: the size and sha256 of each file above, written last.

Nothing is pickled. The newest checkpoint is ``checkpoint/``; older ones kept are
``checkpoint-<step>/``. A save never removes a checkpoint before its successor is complete
and in place (``save``), so a run killed at any point of one keeps every checkpoint it had
completed. Resuming verifies each file against the manifest and takes the newest
checkpoint that passes, reporting the ones it skips (``latest``, ``load_latest``).

A run sharded with FSDP writes the same files: its model and optimizer states are
gathered into full (unsharded) state dicts first (``gather_sharded``), and its optimizer
state is keyed by parameter index like any other, so a checkpoint does not record how
the run was distributed and resumes under FSDP, DDP or one process alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

LATEST = "checkpoint"
STATE_FILE = "state.json"
MANIFEST = "manifest.json"
FILES = (
    "model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "rng.json", STATE_FILE
)
# checkpoint-<step>, or checkpoint-<step>.<suffix> for a second copy of one step (see _free_name)
_OLDER = re.compile(r"^checkpoint-(\d+)(\.[0-9a-f]+)?$")


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
    """Write a checkpoint as ``run_dir/checkpoint``; keep the newest ``keep``.

    A run killed at any point of a save keeps every checkpoint it had completed: the new one
    is written and synced in a hidden folder, renamed in beside the old one, the old one
    renamed aside to ``checkpoint-<step>/``, the new one renamed to ``checkpoint/``, and
    only then are checkpoints beyond ``keep`` deleted.
    """
    run_dir = Path(run_dir)
    step = int(position["step"])
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=run_dir))
    try:
        files = {"model.safetensors": _write_tensors(tmp / "model.safetensors", model_state)}
        opt_tensors, opt_meta = _optimizer_files(optimizer_state)
        files["optimizer.safetensors"] = _write_tensors(tmp / "optimizer.safetensors", opt_tensors)
        files["optimizer.json"] = _write_json(tmp / "optimizer.json", opt_meta)
        rng_tensors = {}
        for rank, rng in enumerate(rng_states):
            rng_tensors[f"rank{rank}/torch"] = rng["torch"]
            for i, s in enumerate(rng["cuda"]):
                rng_tensors[f"rank{rank}/cuda{i}"] = s
        files["rng.safetensors"] = _write_tensors(tmp / "rng.safetensors", rng_tensors)
        py_rngs = [{"python": r["python"], "numpy": r["numpy"]} for r in rng_states]
        files["rng.json"] = _write_json(tmp / "rng.json", py_rngs)
        files[STATE_FILE] = _write_json(tmp / STATE_FILE, {**position, "processes": len(rng_states)})
        # written last: a folder with a manifest whose files all match it is complete
        _write_json(tmp / MANIFEST, {"step": step, "files": files})
        _fsync(tmp)
        new = _rename(tmp, _free_name(run_dir, step))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    latest = run_dir / LATEST
    if latest.exists():
        previous = _step_of(latest)
        if previous is None:  # not a checkpoint (no readable state): nothing to keep
            _remove(latest)
        else:
            _rename(latest, _free_name(run_dir, previous))
    _rename(new, latest)
    # a kept checkpoint of this step or later is stale: a copy of a step saved again, or one
    # that resume skipped as corrupt. Then the oldest go first, so a kill keeps the newest.
    others = [(_step_of(p), p) for p in _older(run_dir)]
    stale = [p for s, p in others if s is None or s >= step]
    older = [p for s, p in sorted((s, p) for s, p in others if s is not None and s < step)]
    for path in stale + older[: max(0, len(older) - (keep - 1))]:
        _remove(path)
    return latest


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    save_file(tensors_for_saving(tensors), str(path))
    return _sync_and_digest(path)


def _write_json(path: Path, value: Any) -> dict[str, Any]:
    path.write_text(json.dumps(value))
    return _sync_and_digest(path)


def _sync_and_digest(path: Path) -> dict[str, Any]:
    """The file's size and sha256, after it is on disk."""
    with path.open("rb") as f:
        os.fsync(f.fileno())
        return {"bytes": os.fstat(f.fileno()).st_size, "sha256": _sha256(f)}


def _sha256(f) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _fsync(folder: Path) -> None:
    """Sync a folder's entries, so a rename in it survives a power loss, not only a kill."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename(src: Path, dst: Path) -> Path:
    os.rename(src, dst)
    _fsync(dst.parent)
    return dst


def _remove(path: Path) -> None:
    """Delete a checkpoint folder; hidden first, so a kill mid-delete leaves no half folder in view."""
    hidden = _rename(path, path.parent / f".checkpoint.old.{uuid.uuid4().hex}")
    shutil.rmtree(hidden, ignore_errors=True)


def _free_name(run_dir: Path, step: int) -> Path:
    """``checkpoint-<step>``, or a unique variant when a checkpoint of that step is there
    (the run saved the step before and resumed from it): never rename onto a checkpoint."""
    path = run_dir / f"{LATEST}-{step:08d}"
    while path.exists():
        path = run_dir / f"{LATEST}-{step:08d}.{uuid.uuid4().hex[:8]}"
    return path


def _step_of(path: Path) -> int | None:
    try:
        return int(json.loads((path / STATE_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _older(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.is_dir() and _OLDER.match(p.name)]


def _candidates(run_dir: Path) -> list[Path]:
    """Every visible checkpoint folder, the highest step first (unreadable steps last)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in [run_dir / LATEST, *_older(run_dir)] if p.is_dir()]
    steps = {p: _step_of(p) for p in found}
    # checkpoint/ first among equal steps: the save that wrote it finished
    return sorted(found, key=lambda p: (-1 if steps[p] is None else steps[p], p.name == LATEST), reverse=True)


def _newest_good(run_dir: Path, open_one) -> tuple[Path, Any] | None:
    """``(path, open_one(path))`` of the newest checkpoint that ``open_one`` accepts; each one
    refused on the way is reported. None when there is none at all."""
    problems = []
    for path in _candidates(run_dir):
        try:
            opened = open_one(path)
        except ResumeError as exc:
            problems.append(str(exc))
            continue
        for problem in problems:
            warnings.warn(f"{problem}; skipped it, resuming from {path} instead", stacklevel=3)
        return path, opened
    if problems:
        listed = "\n  ".join(problems)
        raise ResumeError(
            f"no checkpoint in {run_dir} can be resumed from:\n  {listed}\n"
            f"Restore the files from a copy, or start a new run folder (or delete these checkpoints "
            f"and metrics.jsonl to train this one from step 0)"
        )
    return None


def latest(run_dir: Path) -> Path | None:
    """The complete, verified checkpoint with the highest step in ``run_dir`` (None if the
    folder holds no checkpoint; ``ResumeError`` if it holds some but none verifies).

    A corrupt or half-written one is reported (a warning naming the file) and skipped for
    the next newest, a kept ``checkpoint-<step>/`` included.
    """
    found = _newest_good(run_dir, verify)
    return found[0] if found else None


def load_latest(run_dir: Path, rank: int = 0) -> tuple[Path | None, dict[str, Any] | None]:
    """``latest`` and ``load`` in one pass over the files: (path, contents) or (None, None)."""
    found = _newest_good(run_dir, lambda path: load(path, rank))
    return found if found else (None, None)


def clean_partial(run_dir: Path) -> None:
    """Remove temporary folders left by a save that was killed."""
    for p in Path(run_dir).glob(".checkpoint.*"):
        shutil.rmtree(p, ignore_errors=True)


def verify(path: Path) -> None:
    """Check every file of checkpoint ``path`` against the size and sha256 its manifest
    recorded when it was saved; ``ResumeError`` names the first file that differs."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        missing = [f for f in FILES if not (path / f).is_file()]
        if missing:
            raise ResumeError(
                f"{path} is not a complete training checkpoint: missing {', '.join(missing)} "
                f"(a save killed part-way, or files deleted)"
            )
        # every file is there: a checkpoint written before checkpoints carried checksums
        warnings.warn(f"{path} has no {MANIFEST} (saved by an older LongArena): its files load unverified")
        return
    meta = _read_json(manifest)
    recorded = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(recorded, dict) or sorted(recorded) != sorted(FILES):
        raise ResumeError(f"{manifest} does not list the files {', '.join(FILES)}; {path} cannot be verified")
    for name, entry in recorded.items():
        file = path / name
        if not file.is_file():
            raise ResumeError(f"{file} is missing from the checkpoint (deleted after it was saved)")
        size = file.stat().st_size
        entry = entry if isinstance(entry, dict) else {}
        if size != entry.get("bytes"):
            saved = entry.get("bytes")
            raise ResumeError(f"{file} has {size} bytes, {saved} when saved: truncated or rewritten")
        with file.open("rb") as f:
            digest = _sha256(f)
        if digest != entry.get("sha256"):
            raise ResumeError(
                f"{file} does not match the checksum recorded when it was saved (sha256 {digest[:16]}…, "
                f"saved {str(entry.get('sha256'))[:16]}…): the file is corrupt"
            )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResumeError(f"{path} cannot be read as JSON ({exc})") from exc


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors reports a bad header as one of several types
        raise ResumeError(f"{path} cannot be read as safetensors ({type(exc).__name__}: {exc})") from exc


def load(path: Path, rank: int = 0) -> dict[str, Any]:
    """A checkpoint's contents: model and optimizer state dicts, this rank's RNG, position.

    The files are verified against the checksums saved with them first (``verify``).
    """
    path = Path(path)
    verify(path)
    position = _read_json(path / STATE_FILE)
    rngs = _read_json(path / "rng.json")
    rng_tensors = _read_tensors(path / "rng.safetensors")
    # a run resumed on a different number of processes: ranks beyond the saved ones reuse
    # rank 0's generators (the data order does not depend on them, only dropout does)
    r = rank if rank < len(rngs) else 0
    cuda = [rng_tensors[k] for k in sorted((k for k in rng_tensors if k.startswith(f"rank{r}/cuda")), key=lambda k: int(k.rsplit("cuda", 1)[1]))]
    return {
        "model": _read_tensors(path / "model.safetensors"),
        "optimizer": _optimizer_state(_read_tensors(path / "optimizer.safetensors"), _read_json(path / "optimizer.json")),
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
