"""Runs a suite: trains one model per (cell, mixer), runs the studies, writes a report folder.

Every finished cell and study is cached in the run folder, keyed by a hash of everything
that decides its result (the cell's task, model shape, the mixer's full config and the
training budget, all with defaults filled in, plus the arena format version), so an
interrupted ``longarena arena --out DIR`` picks up where it stopped::

    DIR/arena.json                           format version of the folder
    DIR/cells/<task>__<mixer>__<key>.json    one trained cell
    DIR/studies/<kind>__<key>/result.json    one study, beside the figures it wrote
    DIR/results.json, report.md, report.html, *.png   the report (see report.py)

Failed cells and studies are reported but not cached, so the next run tries them again.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import longarena
from longarena import mixers, models, tasks
from longarena.arena import studies
from longarena.arena.suites import Cell, StudySpec, Suite
from longarena.atomic import write_text
from longarena.config import ConfigError
from longarena.train.objective import model_for_task
from longarena.train.trainer import train

#: bump when the cached files or results.json change shape; older run folders are refused
FORMAT_VERSION = 2
MANIFEST = "arena.json"
#: training-loss points kept per cell for the report's curves
CURVE_POINTS = 60


class RunFolderError(ConfigError):
    """The run folder was written by another format version of the arena."""


@dataclasses.dataclass
class CellResult:
    task: str
    mixer: str
    accuracy: float | None
    loss: float | None
    parameters: int
    state_size: int | None
    seconds: float
    error: str | None = None
    #: CPU time of this process (all threads) while the cell ran: comparable on a busy machine
    cpu_seconds: float = 0.0
    #: the task's kind (lm: accuracy over scored tokens; classification/retrieval: over sequences)
    task_kind: str = ""
    #: (step, training loss) pairs, thinned to at most CURVE_POINTS
    curve: list[list[float]] = dataclasses.field(default_factory=list)
    #: index of the cell in the suite, and the cache key of this (cell, mixer)
    cell: int = 0
    key: str = ""
    #: loaded from the run folder's cache instead of trained in this run
    cached: bool = False


@dataclasses.dataclass
class StudyRecord:
    """A study's result with where it lives in the run folder."""

    spec: StudySpec
    result: studies.StudyResult
    #: the study's folder, relative to the run folder; its figures are relative to it
    folder: str
    key: str
    cached: bool = False


@dataclasses.dataclass
class ArenaRun:
    suite: Suite
    cells: list[CellResult]
    studies: list[StudyRecord]
    seconds: float
    selected: list[str] | None = None
    #: per cell index, accuracies that need no sequence model (e.g. the most frequent class)
    references: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` payload (see results.schema.json)."""
        return {
            "format_version": FORMAT_VERSION,
            "suite": self.suite.to_dict(),
            "library": {"name": "longarena", "version": longarena.__version__},
            "machine": machine_info(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": self.seconds,
            "selected_mixers": self.selected,
            "cells": [dataclasses.asdict(c) for c in self.cells],
            "references": [{"cell": j, "name": name, "accuracy": acc}
                           for j, refs in sorted(self.references.items()) for name, acc in refs.items()],
            "studies": [
                {
                    "kind": s.spec.kind,
                    "title": s.spec.title or s.result.title,
                    "config": s.spec.config,
                    "folder": s.folder,
                    "key": s.key,
                    "cached": s.cached,
                    "data": s.result.data,
                    "figures": [f"{s.folder}/{f}" for f in s.result.figures],
                    "markdown": s.result.markdown,
                    "seconds": s.result.seconds,
                    "error": s.result.error,
                }
                for s in self.studies
            ],
        }


def machine_info() -> dict[str, Any]:
    """What the timings in a report depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu,
        "cpu_cores": cores,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def mixer_names(cell: Cell, task_kind: str) -> list[str]:
    """The mixers (and whole models) a cell compares; only causal ones on LM tasks."""
    names = mixers.names() if isinstance(cell.mixers, str) else [n for n in cell.mixers if n not in cell.models]
    if task_kind == "lm":
        names = [n for n in names if mixers.is_causal(n, **cell.mixer_overrides.get(n, {}))]
    return names + [n for n in cell.models if n not in names]


def _overrides(cell: Cell, mixer: str, task_kind: str) -> dict[str, Any]:
    overrides = dict(cell.mixer_overrides.get(mixer, {}))
    if task_kind != "lm" and mixer == "attention":
        overrides.setdefault("causal", False)
    return overrides


def _hash(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cell_key(cell: Cell, mixer: str, task: Any = None) -> str:
    """Hash of everything that decides one (cell, mixer) result, defaults filled in.

    Filling defaults makes a changed library default a different key (the old result is
    not reused), and so does a new library version; code changed within a version is not
    seen (``--fresh``). Other mixers of the cell are not part of it, so adding one to a
    suite keeps the others' cached results.
    """
    task = task or tasks.get(cell.task, **cell.task_config)
    if mixer in cell.models:
        model = {"model": mixer, "fields": cell.models[mixer]}
    else:
        overrides = _overrides(cell, mixer, task.kind)
        try:
            model = {"mixer": mixer, "config": mixers.make_config(mixer, cell.d_model, **overrides).to_dict()}
        except (ValueError, KeyError):  # a bad config: run_cell reports it; the key only has to be stable
            model = {"mixer": mixer, "overrides": overrides}
    return _hash({
        "format": FORMAT_VERSION,
        "library": longarena.__version__,
        "task": cell.task,
        "task_config": task.config.to_dict(),
        "d_model": cell.d_model,
        "n_layers": cell.n_layers,
        # only when set, so the keys of cells without it (every cached result) stay the same
        **({"backbone": cell.backbone} if cell.backbone else {}),
        "model": model,
        "train": cell.train_config().to_dict(),
    })


def study_key(spec: StudySpec) -> str:
    """Hash of a study's kind and config; the library version stands for the study's own
    defaults, which a config that leaves keys out relies on."""
    return _hash({"format": FORMAT_VERSION, "kind": spec.kind, "config": spec.config, "library": longarena.__version__})


def _whole_model(cell: Cell, name: str, task) -> torch.nn.Module:
    fields = {"vocab_size": task.vocab_size, "d_model": cell.d_model, **cell.models[name]}
    if task.kind != "lm":
        fields["num_classes"] = task.num_classes
    if task.kind == "retrieval" and f"{name}_dual" in models.names():
        name = f"{name}_dual"
    return models.get(name, **fields)


def _curve(history: list[dict[str, float]]) -> list[list[float]]:
    """(last step, mean training loss) of at most CURVE_POINTS consecutive windows of steps."""
    stride = max(1, -(-len(history) // CURVE_POINTS))
    windows = [history[i:i + stride] for i in range(0, len(history), stride)]
    return [[float(w[-1]["step"]), sum(float(h["loss"]) for h in w) / len(w)] for w in windows]


def run_cell(cell: Cell, mixer: str, *, progress: bool = False, task: Any = None) -> CellResult:
    """Train and evaluate one mixer (or one whole model named in ``cell.models``) on the cell's task."""
    task = task or tasks.get(cell.task, **cell.task_config)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        torch.manual_seed(cell.train_config().seed)
        if mixer in cell.models:
            model = _whole_model(cell, mixer, task)
        else:
            overrides = _overrides(cell, mixer, task.kind)
            config = {"d_model": cell.d_model, "n_layers": cell.n_layers, "pattern": (mixer,),
                      "mixer": {mixer: overrides} if overrides else {}, **cell.backbone}
            model = model_for_task(task, config)
        result = train(model, task, cell.train_config(), progress=progress, description=f"{cell.task}/{mixer}")
        try:
            state = model.backbone.state_size(task.seq_len) if task.kind == "lm" else None
        except (NotImplementedError, AttributeError):
            state = None
        return CellResult(cell.task, mixer, result.final["accuracy"], result.final["loss"], result.parameters, state,
                          result.seconds, cpu_seconds=time.process_time() - cpu_start, task_kind=task.kind,
                          curve=_curve(result.history))
    except Exception as exc:  # one broken mixer must not sink the whole comparison
        return CellResult(cell.task, mixer, None, None, 0, None, time.perf_counter() - start,
                          f"{type(exc).__name__}: {exc}", cpu_seconds=time.process_time() - cpu_start, task_kind=task.kind)


def _read_cached(path: Path, key: str, problem_of: Callable[[Any], str | None]) -> dict[str, Any] | None:
    """The cached file at ``path`` for ``key``, or None to run it (again): when it is missing,
    or, with a warning naming it, unreadable, of another format or key, or when
    ``problem_of(its result)`` finds something wrong."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problem = f"is not valid JSON ({exc})"
    else:
        if not isinstance(data, dict):
            problem = f"holds a JSON {type(data).__name__}, expected an object"
        elif data.get("format_version") != FORMAT_VERSION:
            problem = f"has format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}"
        elif data.get("key") != key:
            problem = f"holds key {data.get('key')!r}, expected {key!r} (its file name's)"
        elif not isinstance(data.get("result"), dict):
            problem = "has no result object"
        else:
            problem = problem_of(data["result"])
    if problem is None:
        return data
    warnings.warn(f"cached result {path} {problem}; running it again", stacklevel=3)
    return None


def _fields_problem(result: dict[str, Any], cls: type) -> str | None:
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if missing := sorted(required - set(result)):
        return f"lacks {', '.join(missing)}"
    if extra := sorted(set(result) - names):
        return f"has unknown fields {', '.join(extra)}"
    return None


def _number(value: Any) -> bool:
    """A finite JSON number (not a bool, which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cell_problem(result: dict[str, Any]) -> str | None:
    """What is wrong with a cached cell result (only finished cells are cached), or None."""
    if problem := _fields_problem(result, CellResult):
        return problem
    natural = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
    checks = {
        "task": isinstance(result["task"], str),
        "mixer": isinstance(result["mixer"], str),
        "accuracy": _number(result["accuracy"]) and 0 <= result["accuracy"] <= 1,
        "loss": result["loss"] is None or _number(result["loss"]),
        "parameters": natural(result["parameters"]),
        "state_size": result["state_size"] is None or natural(result["state_size"]),
        "seconds": _number(result["seconds"]) and result["seconds"] >= 0,
        "cpu_seconds": _number(result.get("cpu_seconds", 0.0)) and result.get("cpu_seconds", 0.0) >= 0,
        "error": result.get("error") is None,
        "task_kind": isinstance(result.get("task_kind", ""), str),
        "curve": isinstance(result.get("curve", []), list) and all(
            isinstance(p, list) and len(p) == 2 and _number(p[0]) and (p[1] is None or _number(p[1]))
            for p in result.get("curve", [])
        ),
    }
    expected = {
        "accuracy": "a finite number in [0, 1]", "loss": "a finite number or null", "parameters": "an integer >= 0",
        "state_size": "an integer >= 0 or null", "seconds": "a finite number >= 0",
        "cpu_seconds": "a finite number >= 0", "error": "null (failed cells are not cached)",
        "curve": "a list of [step, loss] pairs",
    }
    for name, ok in checks.items():
        if not ok:
            return f"has {name} {result.get(name)!r}, expected {expected.get(name, 'a string')}"
    return None


def _study_problem(result: dict[str, Any]) -> str | None:
    if problem := _fields_problem(result, studies.StudyResult):
        return problem
    if result.get("error") is not None:
        return "records an error (failed studies are not cached)"
    return None


def check_run_folder(out_dir: Path, *, fresh: bool = False) -> None:
    """Refuse a run folder another arena format wrote (``fresh`` re-runs everything into it)."""
    manifest = out_dir / MANIFEST
    if manifest.is_file():
        try:
            version = json.loads(manifest.read_text()).get("format_version")
        except (OSError, ValueError, AttributeError):
            version = None
    elif (out_dir / "results.json").is_file():
        version = 1  # the first arena wrote results.json and report.md with no manifest
    else:
        return
    if version == FORMAT_VERSION:
        return
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise RunFolderError(
            f"run folder {out_dir} was written by a newer LongArena (arena format {version}; this one "
            f"reads format {FORMAT_VERSION}); upgrade longarena or choose another --out"
        )
    if not fresh:
        raise RunFolderError(
            f"run folder {out_dir} was written by an older LongArena (arena format {version}; this one writes "
            f"format {FORMAT_VERSION}) and its results cannot be reused; pass --fresh to re-run everything "
            "into it, or choose another --out"
        )


def _select(suite: Suite, only: list[str] | None) -> list[tuple[int, Cell, Any, list[str]]]:
    """(index, cell, task, mixer names) for every cell, restricted to ``only`` when given."""
    plan = []
    for i, cell in enumerate(suite.cells):
        task = tasks.get(cell.task, **cell.task_config)
        names = mixer_names(cell, task.kind)
        plan.append((i, cell, task, [n for n in names if not only or n in only]))
    if only:
        known = sorted({n for _, cell, task, _ in plan for n in mixer_names(cell, task.kind)})
        unknown = [n for n in only if n not in known]
        if unknown:
            registered = mixers.names() + [n for n in models.names() if any(n in c.models for c in suite.cells)]
            what = "not in suite" if all(n in registered for n in unknown) else "unknown mixer(s)"
            raise ConfigError(
                f"{what} {unknown}: suite {suite.name!r} compares {', '.join(known)}"
                + ("" if what == "not in suite" else f"; known mixers: {', '.join(mixers.names())}")
            )
    return plan


def run_suite(
    suite: Suite,
    out_dir: str | os.PathLike | None = None,
    *,
    only: list[str] | None = None,
    fresh: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> ArenaRun:
    """Run every (cell, mixer) of ``suite``, then its studies; write the report to ``out_dir``.

    With ``out_dir``, finished cells and studies found there are loaded instead of re-run
    (``fresh=True`` re-runs them); ``only`` restricts the cells to these mixers/models.
    """
    from longarena.arena import report

    say = log or (lambda _msg: None)
    out = Path(out_dir) if out_dir is not None else None
    plan = _select(suite, only)
    if out is not None:
        check_run_folder(out, fresh=fresh)
        write_text(out / MANIFEST, json.dumps({"format_version": FORMAT_VERSION, "library_version": longarena.__version__}))
    threads = torch.get_num_threads()
    if suite.threads is not None:
        torch.set_num_threads(suite.threads)
    try:
        return _run(suite, plan, out, only=only, fresh=fresh, progress=progress, say=say, report=report)
    finally:
        torch.set_num_threads(threads)


def _run(suite: Suite, plan: list, out: Path | None, *, only: list[str] | None, fresh: bool, progress: bool,
         say: Callable[[str], None], report: Any) -> ArenaRun:
    start = time.perf_counter()
    cells: list[CellResult] = []
    for index, cell, task, names in plan:
        data_ready = False
        for name in names:
            key = cell_key(cell, name, task)
            path = out / "cells" / f"{cell.task}__{name}__{key}.json" if out is not None else None
            cached = None if fresh or path is None else _read_cached(path, key, _cell_problem)
            if cached is not None:
                result = CellResult(**{**cached["result"], "cached": True})
            else:
                if not data_ready:  # generated once per cell, outside every mixer's timing
                    _prepare_data(cell, task, say)
                    data_ready = True
                result = run_cell(cell, name, progress=progress, task=task)
                result.key = key
                if path is not None and result.error is None:
                    write_text(path, json.dumps({"format_version": FORMAT_VERSION, "key": key,
                                                 "cell": cell.to_dict(), "result": dataclasses.asdict(result)}))
            result.cell, result.key = index, key
            cells.append(result)
            status = f"acc {result.accuracy:.3f}" if result.error is None else f"error {result.error}"
            timing = "cached" if result.cached else f"{result.seconds:.1f}s, CPU {result.cpu_seconds:.1f}s"
            say(f"  {cell.task:<20} {name:<16} {status}  ({timing})")
    references = {index: refs for index, cell, task, names in plan if names and (refs := reference_accuracies(task))}
    records = [_run_study(spec, out, fresh=fresh, progress=progress, say=say) for spec in suite.studies]
    run = ArenaRun(suite, cells, records, time.perf_counter() - start, only, references)
    if out is not None:
        report.write_report(run.to_dict(), out)
    return run


def reference_accuracies(task: Any) -> dict[str, float]:
    """Validation accuracy of answering without reading the input: the most frequent class."""
    if task.kind == "lm":
        return {}
    try:
        labels = [int(ex["label"]) for ex in task.split("validation")]
    except Exception:  # the cells record why the data is unusable
        return {}
    if not labels:
        return {}
    return {"most frequent class": max(labels.count(v) for v in set(labels)) / len(labels)}


def _prepare_data(cell: Cell, task: Any, say: Callable[[str], None]) -> None:
    start = time.perf_counter()
    try:
        for split in ("train", "validation"):
            task.split(split)
    except Exception as exc:  # left to run_cell, which records it against each mixer
        say(f"  {cell.task:<20} data failed: {type(exc).__name__}: {exc}")
        return
    say(f"  {cell.task:<20} data ready ({time.perf_counter() - start:.1f}s)")


def _run_study(spec: StudySpec, out: Path | None, *, fresh: bool, progress: bool, say: Callable[[str], None]) -> StudyRecord:
    key = study_key(spec)
    folder = f"studies/{spec.kind}__{key}"
    if out is not None and not fresh:
        cached = _read_cached(out / folder / "result.json", key, _study_problem)
        if cached is not None:
            say(f"  study {spec.kind:<22} cached")
            return StudyRecord(spec, studies.StudyResult(**cached["result"]), folder, key, cached=True)
    say(f"  study {spec.kind:<22} running")
    target = out / folder if out is not None else Path(tempfile.mkdtemp(prefix=f"longarena-{spec.kind}-"))
    result = studies.run_study(spec.kind, spec.config, target, progress=progress)
    if out is not None and result.error is None:
        from longarena.arena.report import plain

        # plain(): study data may hold numpy values, which json cannot write
        write_text(out / folder / "result.json", json.dumps(plain({"format_version": FORMAT_VERSION, "key": key,
                                                                 "spec": spec.to_dict(),
                                                                 "result": dataclasses.asdict(result)})))
    status = f"error {result.error}" if result.error else "done"
    say(f"  study {spec.kind:<22} {status} ({result.seconds:.1f}s)")
    return StudyRecord(spec, result, folder, key)


def results_table(cells: list[CellResult]) -> list[list[str]]:
    """Header row then one row per cell: what the CLI and report.md print."""
    rows = [["task", "mixer", "accuracy", "loss", "params", "state@T", "seconds"]]
    for r in cells:
        rows.append([
            r.task, r.mixer,
            "error" if r.error else f"{r.accuracy:.3f}",
            "" if r.loss is None else f"{r.loss:.3f}",
            f"{r.parameters:,}",
            "" if r.state_size is None else f"{r.state_size:,}",
            f"{r.seconds:.1f}" + (" (cached)" if r.cached else ""),
        ])
    return rows
