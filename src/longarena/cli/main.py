"""The ``longarena`` command: a thin layer over the library and the helpers beside it in ``cli/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

import longarena

app = typer.Typer(
    name="longarena",
    help="Long-context sequence models under one interface: train, compare, benchmark, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_pairs(pairs: list[str] | None, what: str) -> dict:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}``."""
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise typer.BadParameter(f"{what} entries look like key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _parse_value(value)
    return out


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


@app.command()
def version() -> None:
    """Print the LongArena version."""
    console.print(f"longarena {longarena.__version__}")


@app.command("list")
def list_components(
    kind: Annotated[Optional[str], typer.Argument(help="mixers, models, positions, tasks or suites (default: all)")] = None,
) -> None:
    """List registered mixers, models, position schemes, tasks and arena suites."""
    from longarena import mixers, models, positions, tasks
    from longarena.arena.suites import SUITES, get_suite

    sections = {
        "mixers": mixers.summaries,
        "models": models.summaries,
        "positions": positions.summaries,
        "tasks": tasks.summaries,
        "suites": lambda: {name: get_suite(name).description for name in SUITES},
    }
    if kind is not None and kind not in sections:
        _fail(f"unknown kind {kind!r}; expected one of: {', '.join(sections)}")
    for name, summaries in sections.items():
        if kind is not None and name != kind:
            continue
        table = Table(title=name, show_header=False, title_justify="left")
        table.add_column("name", style="bold cyan")
        table.add_column("description")
        for entry, text in summaries().items():
            table.add_row(entry, text)
        console.print(table)


@app.command()
def train(
    task: Annotated[Optional[str], typer.Option(help="task name (longarena list tasks) (default: associative_recall)")] = None,
    pattern: Annotated[Optional[str], typer.Option(help="comma-separated mixer names, cycled over the layers, e.g. mamba,attention (default: attention)")] = None,
    d_model: Annotated[Optional[int], typer.Option(help="model width (default: 64)")] = None,
    layers: Annotated[Optional[int], typer.Option(help="number of layers (default: 2)")] = None,
    steps: Annotated[Optional[int], typer.Option(help="optimizer steps (default: 200)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="examples per optimizer step, over all processes (default: 32)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="peak learning rate (default: 3e-3)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed (default: 0)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda (default: auto)")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32 or bf16 (autocast) (default: fp32)")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="micro-batches per optimizer step (default: 1)")] = None,
    task_config: Annotated[Optional[list[str]], typer.Option("--task-config", help="task field, key=value (repeatable)")] = None,
    mixer_config: Annotated[Optional[list[str]], typer.Option("--mixer-config", help="mixer field, name.key=value (repeatable)")] = None,
    config: Annotated[Optional[Path], typer.Option(help="run config file (YAML or JSON) with sections task, task_config, model, train")] = None,
    preset: Annotated[Optional[str], typer.Option(help="a named config, e.g. lra/listops/s4 (see --list-presets)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override, section.key=value, e.g. train.lr=3e-4 (repeatable)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="run folder: config.json, metrics.jsonl, checkpoint/, model.safetensors")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its latest checkpoint")] = False,
    tensorboard: Annotated[bool, typer.Option(help="also write TensorBoard logs to --out/tensorboard")] = False,
    list_presets: Annotated[bool, typer.Option(help="list the presets and exit")] = False,
) -> None:
    """Train a model on a task: from options, a config file or a preset; resumable run folders."""
    from longarena.cli import train as train_cli
    from longarena.train import presets

    if list_presets:
        table = Table(title="presets", show_header=False, title_justify="left")
        table.add_column("name", style="bold cyan")
        table.add_column("description")
        for name, text in presets.summaries().items():
            table.add_row(name, text)
        console.print(table)
        return
    try:
        options = train_cli.option_overrides(
            task=task, pattern=pattern, d_model=d_model, layers=layers, task_config=task_config, mixer_config=mixer_config,
            steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device, precision=precision, grad_accum=grad_accum,
        )
        raw = train_cli.layered_config(
            preset=preset, config_file=config, sets=set_, options=options, out=out, resume=resume
        )
        resolved, result = train_cli.run(
            raw, out=out, resume=resume, tensorboard=tensorboard, console=console
        )
    except (KeyError, ValueError) as exc:
        _fail(str(exc))
    if train_cli.is_main_process():
        names = list(resolved.model.get("pattern") or ["attention"])
        console.print(
            f"{resolved.raw['task']} with {names}: validation accuracy {result.final['accuracy']:.3f}, "
            f"loss {result.final['loss']:.3f} ({result.parameters:,} parameters, {result.seconds:.1f}s)"
        )
        if "test_accuracy" in result.final:
            console.print(f"test accuracy {result.final['test_accuracy']:.3f}, loss {result.final['test_loss']:.3f}")
        if out is not None:
            console.print(f"saved to {out}")


@app.command()
def arena(
    suite: Annotated[str, typer.Option(help="suite name (longarena list suites) or a .json/.yaml suite file")] = "quick",
    out: Annotated[Path, typer.Option(help="run folder: cached cells and the report; rerunning it resumes")] = Path("runs/arena"),
    mixers_: Annotated[Optional[str], typer.Option("--mixers", "--only", help="comma-separated mixers/models to run (default: all in the suite)")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="re-run every cell and study instead of loading finished ones from --out")] = False,
) -> None:
    """Run a controlled comparison: every mixer, same shape, data and budget, then the suite's studies; writes a report."""
    from longarena.arena import get_suite, run_suite
    from longarena.arena.runner import results_table

    selected = [n.strip() for n in mixers_.split(",") if n.strip()] if mixers_ else None
    try:
        s = get_suite(suite)
        console.print(f"[bold]arena[/bold] suite {s.name!r}: {s.description}")
        run = run_suite(s, out, progress=True, only=selected, fresh=fresh, log=console.print)
    except ValueError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/yellow]: finished cells are kept in {out}; run the same command to resume")
        raise typer.Exit(130)
    rows = results_table(run.cells)
    table = Table(title=f"suite {s.name}", title_justify="left")
    for head in rows[0]:
        table.add_column(head, justify="right" if head not in ("task", "mixer") else "left")
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)
    for record in run.studies:
        status = f"[red]error[/red] {record.result.error}" if record.result.error else f"{len(record.result.figures)} figure(s)"
        console.print(f"study {record.spec.kind}: {status}")
    console.print(f"report: {out / 'report.md'} and {out / 'report.html'} ({run.seconds:.0f} s)")


@app.command()
def bench(
    mixers_: Annotated[str, typer.Option("--mixers", help="comma-separated mixer names, or 'all'")] = "attention",
    lengths: Annotated[str, typer.Option(help="comma-separated sequence lengths")] = "1024,4096,16384",
    modes: Annotated[str, typer.Option(help="comma-separated: fwd, fwd_bwd, step")] = "fwd,fwd_bwd,step",
    peers: Annotated[str, typer.Option(help="peers measured side by side: 'auto' (every installed one), 'none', or names")] = "auto",
    baseline: Annotated[str, typer.Option(help="mixer or peer every ratio is taken against (added if missing)")] = "attention",
    d_model: Annotated[int, typer.Option(help="model width")] = 64,
    batch: Annotated[int, typer.Option(help="batch size")] = 1,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16")] = "float32",
    repeats: Annotated[int, typer.Option(help="timed repeats per cell (median reported)")] = 3,
    memory: Annotated[bool, typer.Option(help="peak memory too (CPU: one subprocess per mixer; GPU: allocator peak)")] = True,
    out: Annotated[Path, typer.Option(help="folder for bench.json, bench.md and the plots (or a .json file path)")] = Path("runs/bench"),
) -> None:
    """Time and measure memory of mixers and installed peers against sequence length; ratios to a baseline."""
    from longarena.arena.bench import BenchConfig, run_bench
    from longarena.config import ConfigError

    try:
        lens = [int(v) for v in lengths.split(",") if v.strip()]
    except ValueError:
        _fail(f"--lengths must be comma-separated positive integers, got {lengths!r}")
    try:
        config = BenchConfig(
            mixers=tuple(n.strip() for n in mixers_.split(",") if n.strip()), lengths=tuple(lens),
            modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
            peers=tuple(p.strip() for p in peers.split(",") if p.strip()), baseline=baseline, d_model=d_model,
            batch=batch, device=device, dtype=dtype, repeats=repeats, memory=memory,
        )
    except ConfigError as exc:
        _fail(str(exc))
    report = run_bench(config, progress=lambda r: console.print(
        f"  {r.mixer:<16} T={r.seq_len:<7} {r.mode:<8} "
        + (f"{r.ms:9.2f} ms" if r.ms is not None else f"[red]{r.status}[/red] {r.error}")))
    header, rows = report.table_rows()
    table = Table(title=f"bench on {report.device_name} ({dtype}, d_model={d_model}, batch={batch})", title_justify="left")
    for head in header:
        table.add_column(head, justify="left" if head in ("subject", "mode") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for name, why in report.peers_missing.items():
        console.print(f"peer {name}: {why}")
    folder, json_path = (out.parent, out) if out.suffix == ".json" else (out, out / "bench.json")
    for path in (report.write_json(json_path), report.write_markdown(folder / "bench.md"), *report.plot(folder)):
        console.print(f"wrote {path}")


@app.command()
def extend(
    model: Annotated[Path, typer.Option(help="a transformers save_pretrained folder (or one holding a GGUF file)")],
    method: Annotated[str, typer.Option(help="linear (PI), ntk, dynamic_ntk or yarn")],
    factor: Annotated[float, typer.Option(help="context extension factor (>= 1)")],
    out: Annotated[Path, typer.Option(help="new folder for the patched model")],
    gguf_file: Annotated[Optional[str], typer.Option(help="GGUF file name inside --model")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", help="method parameter, key=value (repeatable)")] = None,
) -> None:
    """Patch a pretrained RoPE model (Llama family) to a longer context and save it."""
    from longarena.positions import extend_checkpoint

    try:
        path = extend_checkpoint(model, method, factor, out, gguf_file=gguf_file, **_parse_pairs(param, "--param"))
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as exc:
        _fail(str(exc))
    console.print(f"{method} x{factor:g}: saved to {path}")


data_app = typer.Typer(help="Generate, cache and inspect task data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("show")
def data_show(
    name: Annotated[str, typer.Argument(help="task name (longarena list tasks)")],
    out: Annotated[Path, typer.Option(help="folder for the summary, decoded examples and PNGs")] = Path("runs/data"),
    n: Annotated[int, typer.Option(help="examples to show")] = 8,
    split: Annotated[str, typer.Option(help="train, validation or test")] = "train",
    config: Annotated[Optional[list[str]], typer.Option("--config", help="task field, key=value (repeatable)")] = None,
) -> None:
    """Write a look at a task: summary.json, examples.txt and, for image tasks, sample PNGs."""
    from longarena.cli.data import show

    try:
        paths = show(name, out / name, n=n, split=split, **_parse_pairs(config, "--config"))
    except (KeyError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    for path in paths:
        console.print(f"wrote {path}")


@data_app.command("make")
def data_make(
    name: Annotated[str, typer.Argument(help="task name (longarena list tasks)")],
    workers: Annotated[Optional[int], typer.Option(help="processes for generation (default: all cores)")] = None,
    config: Annotated[Optional[list[str]], typer.Option("--config", help="task field, key=value (repeatable)")] = None,
) -> None:
    """Generate and cache every split of a task (progress bar; cached splits load instantly)."""
    from longarena.cli.data import make

    try:
        report = make(name, workers=workers, **_parse_pairs(config, "--config"))
    except (KeyError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    table = Table(title=f"data {name}", title_justify="left")
    for head in ("split", "examples", "from cache", "seconds", "file"):
        table.add_column(head)
    for split, info in report.items():
        table.add_row(split, str(info["n"]), str(info["from_cache"]), str(info["seconds"]), str(info["cache_file"]))
    console.print(table)


@app.command("eval")
def eval_(
    name: Annotated[str, typer.Argument(help="niah, passkey, lost-in-middle, ppl, lambada, longbench or induction")],
    model: Annotated[str, typer.Option(help="'smollm2' (offline SmolLM2-135M), a transformers folder or a LongArena checkpoint")] = "smollm2",
    extend: Annotated[Optional[str], typer.Option(help="patch the model first, e.g. yarn:4 or linear:2")] = None,
    out: Annotated[Optional[Path], typer.Option(help="run folder (default runs/eval-NAME-<time>)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="runner argument, key=value with JSON values, e.g. lengths=[1024,2048]")] = None,
) -> None:
    """Evaluate how a model uses long context; writes JSON and plots to a run folder."""
    from longarena import evals
    from longarena.cli.evals import new_run_dir, rich_progress
    from longarena.evals.runners import load_model

    if name not in evals.names():
        _fail(f"unknown eval {name!r}; known evals: {', '.join(evals.names())}")
    try:
        # runners take the spec itself (ppl reloads it per extension method) unless it is patched here
        target = load_model(model, extend=extend) if extend else model
        run_dir = out if out is not None else new_run_dir(name)
        with rich_progress(name) as progress:
            result = evals.get(name)(target, run_dir, progress=progress, **_parse_pairs(set_, "--set"))
    except (ValueError, FileNotFoundError, ImportError, TypeError) as exc:
        _fail(str(exc))
    console.print_json(json.dumps(result["summary"], default=str))
    files = result["files"]
    for path in files.values() if isinstance(files, dict) else files:
        console.print(f"wrote {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
