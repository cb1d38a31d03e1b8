"""Runs a suite: trains one model per (cell, mixer), collects metrics, writes a report."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from longarena import mixers, models, tasks
from longarena.arena.suites import Cell, Suite
from longarena.models.backbone import ModelConfig
from longarena.train.loop import model_for_task, train


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


def _mixer_names(cell: Cell, task_kind: str) -> list[str]:
    if isinstance(cell.mixers, str):
        if cell.mixers not in ("all", "causal"):
            return [cell.mixers]
        names = mixers.names()
    else:
        names = list(cell.mixers)
    if task_kind == "lm":
        names = [n for n in names if mixers.is_causal(n, **cell.mixer_overrides.get(n, {}))]
    return names + [n for n in cell.models if n not in names]


def _whole_model(cell: Cell, name: str, task) -> torch.nn.Module:
    fields = {"vocab_size": task.vocab_size, "d_model": cell.d_model, **cell.models[name]}
    if task.kind != "lm":
        fields["num_classes"] = task.num_classes
    if task.kind == "retrieval" and f"{name}_dual" in models.names():
        name = f"{name}_dual"
    return models.get(name, **fields)


def run_cell(cell: Cell, mixer: str, *, progress: bool = False) -> CellResult:
    """Train and evaluate one mixer (or one whole model named in ``cell.models``) on the cell's task."""
    task = tasks.get(cell.task, **cell.task_config)
    overrides = dict(cell.mixer_overrides.get(mixer, {}))
    if task.kind != "lm" and mixer == "attention":
        overrides.setdefault("causal", False)
    start = time.perf_counter()
    try:
        torch.manual_seed(cell.train_config().seed)
        if mixer in cell.models:
            model = _whole_model(cell, mixer, task)
        else:
            config = ModelConfig(d_model=cell.d_model, n_layers=cell.n_layers, pattern=(mixer,),
                                 mixer={mixer: overrides} if overrides else {})
            model = model_for_task(task, config)
        result = train(model, task, cell.train_config(), progress=progress, description=f"{cell.task}/{mixer}")
        try:
            state = model.backbone.state_size(task.seq_len) if task.kind == "lm" else None
        except (NotImplementedError, AttributeError):
            state = None
        return CellResult(cell.task, mixer, result.final["accuracy"], result.final["loss"], result.parameters, state, result.seconds)
    except Exception as exc:  # one broken mixer must not sink the whole comparison
        return CellResult(cell.task, mixer, None, None, 0, None, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")


def run_suite(suite: Suite, out_dir: str | os.PathLike | None = None, *, progress: bool = True, only: list[str] | None = None, console: Any = None) -> list[CellResult]:
    """Run every (cell, mixer) of ``suite``; write ``results.json`` and ``report.md`` to ``out_dir``."""
    results: list[CellResult] = []
    for cell in suite.cells:
        kind = tasks.get(cell.task, **cell.task_config).kind
        for name in _mixer_names(cell, kind):
            if only and name not in only:
                continue
            result = run_cell(cell, name, progress=progress)
            results.append(result)
            if console is not None:
                status = f"acc {result.accuracy:.3f}" if result.error is None else f"[red]error[/red] {result.error}"
                console.print(f"  {cell.task:<20} {name:<16} {status}  ({result.seconds:.1f}s)")
    if out_dir is not None:
        write_report(suite, results, Path(out_dir))
    return results


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def results_table(results: list[CellResult]) -> list[list[str]]:
    rows = [["task", "mixer", "accuracy", "loss", "params", "state@T", "seconds"]]
    for r in results:
        rows.append([
            r.task, r.mixer,
            "error" if r.error else f"{r.accuracy:.3f}",
            "" if r.loss is None else f"{r.loss:.3f}",
            f"{r.parameters:,}",
            "" if r.state_size is None else f"{r.state_size:,}",
            f"{r.seconds:.1f}",
        ])
    return rows


def write_report(suite: Suite, results: list[CellResult], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"suite": suite.to_dict(), "results": [dataclasses.asdict(r) for r in results]}
    _atomic_write(out_dir / "results.json", json.dumps(payload, indent=2))
    rows = results_table(results)
    lines = [f"# LongArena — suite `{suite.name}`", "", suite.description, ""]
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("|" + "---|" * len(rows[0]))
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    errors = [r for r in results if r.error]
    if errors:
        lines += ["", "## Errors", ""] + [f"- `{r.task}` / `{r.mixer}`: {r.error}" for r in errors]
    lines += ["", "state@T: numbers carried per sequence after the task's full length (KV cache or recurrent state)."]
    _atomic_write(out_dir / "report.md", "\n".join(lines) + "\n")
