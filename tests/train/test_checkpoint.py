"""Training checkpoints under faults: a save killed at any point, corrupt and torn files."""

from __future__ import annotations

import itertools
import os
import pathlib
import shutil
import traceback

import pytest
import torch

from longarena.train import checkpoint
from longarena.train.checkpoint import ResumeError

KILLED = 77


def _state(step: int) -> dict:
    """What the trainer passes to ``save``: weights, an AdamW state, generators, position."""
    torch.manual_seed(step)
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.AdamW([w])
    w.sum().backward()
    opt.step()
    return {
        "model_state": {"w": w.detach()},
        "optimizer_state": opt.state_dict(),
        "rng_states": [checkpoint.rng_state()],
        "position": {"format_version": 1, "step": step, "epoch": 0, "batch": step},
    }


def _save(run, step: int, keep: int) -> None:
    checkpoint.save(run, **_state(step), keep=keep)


def _saved_in_child(run, step: int, keep: int, kill_at: int) -> bool:
    """``save`` in a forked process that dies (``os._exit``, no clean-up runs) just before
    its ``kill_at``-th file-system operation, a folder being deleted then left half-deleted.
    True when the save finished first."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            count = itertools.count()

            def dying(fn, name):
                def wrapped(*args, **kwargs):
                    if next(count) == kill_at:
                        if name == "rmtree":
                            first = sorted(p for p in pathlib.Path(args[0]).rglob("*") if p.is_file())
                            if first:
                                first[0].unlink()
                        os._exit(KILLED)
                    return fn(*args, **kwargs)

                return wrapped

            os.replace = dying(os.replace, "replace")
            os.rename = dying(os.rename, "rename")
            os.fsync = dying(os.fsync, "fsync")
            shutil.rmtree = dying(shutil.rmtree, "rmtree")
            checkpoint.save_file = dying(checkpoint.save_file, "save_file")
            pathlib.Path.write_text = dying(pathlib.Path.write_text, "write_text")
            pathlib.Path.write_bytes = dying(pathlib.Path.write_bytes, "write_bytes")
            _save(run, step, keep)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, KILLED), f"save failed in the child (exit {code}), not by the injected kill"
    return code == 0


def _resumable_steps(run) -> set[int]:
    """Steps of every checkpoint in ``run`` that loads and verifies."""
    steps = set()
    for path in run.iterdir():
        if path.name.startswith("checkpoint"):
            try:
                steps.add(int(checkpoint.load(path)["position"]["step"]))
            except (ResumeError, OSError, ValueError):
                pass
    return steps


@pytest.mark.parametrize("keep", [1, 2])
def test_a_save_killed_at_any_point_loses_no_completed_checkpoint(tmp_path, keep):
    base = tmp_path / "base"
    base.mkdir()
    _save(base, 4, keep)
    _save(base, 8, keep)
    before = _resumable_steps(base)
    assert before == ({8} if keep == 1 else {4, 8})
    for kill_at in itertools.count():
        assert kill_at < 200, "save never finished"
        run = tmp_path / f"run{kill_at}"
        shutil.copytree(base, run)
        finished = _saved_in_child(run, 12, keep, kill_at)
        # what --resume does: pick the newest checkpoint, then drop the temporary folders
        newest = checkpoint.latest(run)
        assert newest is not None, f"killed at operation {kill_at}: no checkpoint left"
        step = checkpoint.load(newest)["position"]["step"]
        assert step in (8, 12), f"killed at operation {kill_at}: resumed from step {step}"
        # the newest completed checkpoint survives until the new one is complete
        assert 8 in _resumable_steps(run) or step == 12, f"killed at operation {kill_at}"
        checkpoint.clean_partial(run)
        assert checkpoint.latest(run) == newest
        if finished:
            assert kill_at > 20  # every write, sync, rename and delete was a kill point
            assert step == 12 and _resumable_steps(run) == ({12} if keep == 1 else {8, 12})
            break
        # the resumed run saves again (the same step, then a later one): the folder ends as
        # an uninterrupted run leaves it, with nothing stale or hidden left
        _save(run, 12, keep)
        _save(run, 16, keep)
        kept = sorted(p.name for p in run.iterdir())
        assert kept == (["checkpoint"] if keep == 1 else ["checkpoint", "checkpoint-00000012"]), kept
        assert checkpoint.load(checkpoint.latest(run))["position"]["step"] == 16


def _flip(path: pathlib.Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_file_is_named_and_the_older_checkpoint_used(tmp_path):
    _save(tmp_path, 4, keep=2)
    _save(tmp_path, 8, keep=2)
    weights = tmp_path / "checkpoint" / "model.safetensors"
    _flip(weights, weights.stat().st_size - 3)  # a weight's bytes: safetensors itself would not notice
    with pytest.warns(UserWarning, match=rf"{weights}[\s\S]*checksum[\s\S]*checkpoint-00000004"):
        older = checkpoint.latest(tmp_path)
    assert older == tmp_path / "checkpoint-00000004"
    with pytest.warns(UserWarning, match=rf"{weights}"):
        path, state = checkpoint.load_latest(tmp_path)  # what the trainer resumes with
    assert path == older and state["position"]["step"] == 4
    with pytest.raises(ResumeError, match=rf"{weights} does not match the checksum"):
        checkpoint.load(tmp_path / "checkpoint")


def test_truncated_and_missing_files_are_named(tmp_path):
    _save(tmp_path, 4, keep=1)
    latest = tmp_path / "checkpoint"
    optimizer = latest / "optimizer.safetensors"
    optimizer.write_bytes(optimizer.read_bytes()[:40])
    with pytest.raises(ResumeError, match=rf"no checkpoint in {tmp_path} can be resumed[\s\S]*{optimizer}"):
        checkpoint.latest(tmp_path)
    _save(tmp_path, 8, keep=1)
    (latest / "rng.json").unlink()
    with pytest.raises(ResumeError, match=rf"{latest / 'rng.json'} is missing"):
        checkpoint.load(latest)


def test_unreadable_json_files_are_named(tmp_path):
    for step, name in enumerate(("manifest.json", "state.json")):
        _save(tmp_path, step, keep=1)
        assert checkpoint.load(tmp_path / "checkpoint")["position"]["step"] == step
        (tmp_path / "checkpoint" / name).write_text("{")
        with pytest.raises(ResumeError, match=rf"{tmp_path / 'checkpoint' / name}"):
            checkpoint.load(tmp_path / "checkpoint")
