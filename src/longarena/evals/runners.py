"""The eval runners (what ``longarena eval <name> --model ...`` calls): model loading and one
function per eval, registered by name in ``EVALS``.

Every ``run_*`` function takes ``model`` (a spec string for ``load_model`` or a ready
``Adapter``) and ``run_dir`` (created if missing), writes ``<eval>.json`` (+ ``<eval>.png``)
and ``run.json`` (the arguments and the model) into it, and returns a small summary dict
``{"eval", "model", "summary", "files"}`` for the CLI to print. ``progress(done, total,
message)`` is optional; ``longarena.cli.evals.rich_progress()`` makes one that drives a rich
progress bar.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from longarena.evals.adapter import Adapter, EvalError, load_hf, load_longarena
from longarena.evals.common import Progress, write_json

DEFAULT_MODEL = "smollm2"


def load_model(
    spec: str | Adapter = DEFAULT_MODEL, *, extend: str | None = None, max_length: int | None = None
) -> Adapter:
    """An adapter for ``spec``: ``"smollm2"`` (the offline SmolLM2-135M-Instruct), a transformers
    checkpoint folder, or a LongArena checkpoint folder (``longarena.models.checkpoint``).

    ``extend="yarn:4"`` patches the model with ``longarena.positions.extend``; ``max_length``
    overrides the trained context the runners compare lengths with.
    """
    if isinstance(spec, Adapter):
        adapter = spec
    elif spec == "smollm2":
        from longarena.evals import smollm2

        adapter = smollm2.adapter()
    else:
        folder = Path(spec)
        config = folder / "config.json"
        if not config.is_file():
            raise EvalError(
                f"unknown model {spec!r}: expected 'smollm2', a transformers checkpoint folder or a LongArena "
                f"checkpoint folder (both hold a config.json)"
            )
        try:
            meta = json.loads(config.read_text())
        except json.JSONDecodeError as exc:
            raise EvalError(f"{config} is not valid JSON: {exc.msg}") from exc
        adapter = load_longarena(folder) if "longarena_version" in meta else load_hf(folder)
    if extend:
        from longarena import positions
        from longarena.evals.perplexity import parse_method

        method, factor, params = parse_method(extend)
        if method != "none":
            positions.extend(adapter.model, method, factor, **params)
            adapter.name = f"{adapter.name}+{method}:{factor:g}"
    if max_length is not None:
        adapter.max_length = max_length
    return adapter


def _finish(
    name: str,
    adapter: Adapter,
    run_dir: Path,
    files: dict[str, Path],
    summary: dict[str, Any],
    args: dict[str, Any],
) -> dict[str, Any]:
    write_json(
        {"eval": name, "model": adapter.describe(), "args": args, "summary": summary}, run_dir / "run.json"
    )
    return {
        "eval": name,
        "model": adapter.name,
        "summary": summary,
        "files": [str(p) for p in files.values()],
    }


def _prepare(model: str | Adapter, run_dir: str | os.PathLike) -> tuple[Adapter, Path]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return load_model(model), run_dir


def run_niah(
    model: str | Adapter,
    run_dir: str | os.PathLike,
    *,
    lengths: Sequence[int] = (1024, 2048, 4096, 8192),
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    kind: str = "needle",
    samples: int = 1,
    seed: int = 0,
    on_too_long: str = "mark",
    progress: Progress = None,
) -> dict[str, Any]:
    """Needle-in-a-haystack grid (kind: needle, passkey, multikey, multivalue): niah JSON + heatmap."""
    from longarena.evals import niah

    args = {
        "lengths": list(lengths),
        "depths": list(depths),
        "kind": kind,
        "samples": samples,
        "seed": seed,
        "on_too_long": on_too_long,
    }
    adapter, run_dir = _prepare(model, run_dir)
    config = niah.GridConfig(
        kind=kind,
        lengths=tuple(lengths),
        depths=tuple(depths),
        samples=samples,
        seed=seed,
        on_too_long=on_too_long,
    )
    result = niah.run_grid(adapter, config, progress)
    files = result.save(run_dir, kind)
    return _finish(
        kind, adapter, run_dir, files, {"mean": result.mean(), "by_length": result.by_length()}, args
    )


def run_passkey(model: str | Adapter, run_dir: str | os.PathLike, **kw: Any) -> dict[str, Any]:
    """Pass-key retrieval over lengths x depths (``run_niah`` with kind="passkey")."""
    return run_niah(model, run_dir, kind="passkey", **kw)


def run_lost_in_middle(
    model: str | Adapter,
    run_dir: str | os.PathLike,
    *,
    num_pairs: Sequence[int] = (10, 25),
    positions: Sequence[int] | None = None,
    samples: int = 2,
    qa_path: str | os.PathLike | None = None,
    n_docs: int | None = None,
    limit: int | None = None,
    on_too_long: str = "mark",
    progress: Progress = None,
) -> dict[str, Any]:
    """Key-value retrieval by gold position (default), or multi-document QA when ``qa_path`` is given."""
    from longarena.evals import lost_in_middle as lim

    args = {
        "num_pairs": list(num_pairs),
        "positions": positions,
        "samples": samples,
        "qa_path": qa_path,
        "n_docs": n_docs,
        "limit": limit,
    }
    adapter, run_dir = _prepare(model, run_dir)
    if qa_path is not None:
        result = lim.run_qa(
            adapter, qa_path, positions, n_docs, limit, on_too_long=on_too_long, progress=progress
        )
    else:
        result = lim.run_kv(
            adapter, num_pairs, positions, samples, on_too_long=on_too_long, progress=progress
        )
    files = result.save(run_dir)
    return _finish(result.kind, adapter, run_dir, files, {"accuracy": result.curves()}, args)


def run_ppl(
    model: str | Adapter,
    run_dir: str | os.PathLike,
    *,
    lengths: Sequence[int] = (1024, 2048, 4096, 8192),
    windows: int = 1,
    protocol: str = "fixed",
    stride: int = 256,
    text: str | os.PathLike | None = None,
    document: str | None = None,
    methods: Sequence[str] = ("none",),
    on_too_long: str = "mark",
    progress: Progress = None,
) -> dict[str, Any]:
    """Perplexity vs length on long text; several ``methods`` ("none", "linear:2", "yarn:2", ...)
    need ``model`` as a spec string, since each method patches a freshly loaded model."""
    from longarena.evals import perplexity as ppl

    args = {
        "lengths": list(lengths),
        "windows": windows,
        "protocol": protocol,
        "stride": stride,
        "text": text,
        "document": document,
        "methods": list(methods),
    }
    config = ppl.PerplexityConfig(
        lengths=tuple(lengths), windows=windows, protocol=protocol, stride=stride, on_too_long=on_too_long
    )
    if list(methods) != ["none"] and isinstance(model, Adapter):
        raise EvalError(
            "comparing extension methods reloads the model for each; pass the model spec, not an adapter"
        )
    adapter, run_dir = _prepare(model, run_dir)
    body = ppl.load_text(text, document) if document else ppl.load_text(text)
    ids = adapter.encode(body)
    if list(methods) == ["none"]:
        result = ppl.evaluate(adapter, ids, config, progress)
    else:
        result = ppl.compare_extensions(lambda: load_model(model), methods, ids, config, progress)
    files = result.save(run_dir)
    return _finish("ppl", adapter, run_dir, files, {"table": result.table(), "text_tokens": len(ids)}, args)


def run_lambada(
    model: str | Adapter,
    run_dir: str | os.PathLike,
    *,
    path: str | os.PathLike,
    limit: int | None = None,
    progress: Progress = None,
) -> dict[str, Any]:
    """LAMBADA accuracy and per-word perplexity from a local lambada_test.jsonl."""
    from longarena.evals import lambada

    adapter, run_dir = _prepare(model, run_dir)
    result = lambada.evaluate(adapter, path, limit, progress)
    files = result.save(run_dir)
    return _finish(
        "lambada",
        adapter,
        run_dir,
        files,
        {"accuracy": result.accuracy, "perplexity": result.perplexity, "n": len(result.rows)},
        {"path": str(path), "limit": limit},
    )


def run_longbench(
    model: str | Adapter,
    run_dir: str | os.PathLike,
    *,
    folder: str | os.PathLike,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    max_input_tokens: int | None = None,
    progress: Progress = None,
) -> dict[str, Any]:
    """LongBench tasks from a local folder of <task>.jsonl files; per-task scores table."""
    from longarena.evals import longbench

    adapter, run_dir = _prepare(model, run_dir)
    result = longbench.evaluate(adapter, folder, tasks, limit, max_input_tokens, progress)
    files = result.save(run_dir)
    args = {
        "folder": str(folder),
        "tasks": list(tasks) if tasks else None,
        "limit": limit,
        "max_input_tokens": max_input_tokens,
    }
    return _finish("longbench", adapter, run_dir, files, {"table": result.table()}, args)


def run_induction(
    model: str | Adapter,
    run_dir: str | os.PathLike,
    *,
    seq_len: int = 64,
    batch: int = 4,
    seed: int = 0,
    icl_text: str | os.PathLike | None = None,
    icl_documents: int = 0,
    progress: Progress = None,
) -> dict[str, Any]:
    """Induction-head scores on repeated random tokens (+ the ICL score on ``icl_documents``
    windows of 501 tokens of long text when > 0)."""
    from longarena.evals import induction

    adapter, run_dir = _prepare(model, run_dir)
    low = 0
    if adapter.vocab_size > 1000:  # skip the special and byte-level tokens at the start of BPE vocabularies
        low = 256
    result = induction.evaluate(
        adapter, induction.InductionConfig(seq_len=seq_len, batch=batch, seed=seed, low=low), progress
    )
    summary: dict[str, Any] = {
        "loss_first": result.loss_first,
        "loss_repeat": result.loss_repeat,
        "copy_accuracy": result.copy_accuracy,
        "top_heads": result.top_heads(),
    }
    if icl_documents:
        from longarena.evals import perplexity as ppl

        ids = adapter.encode(ppl.load_text(icl_text))
        docs = [ids[i * 501 : (i + 1) * 501] for i in range(min(icl_documents, len(ids) // 501))]
        summary["icl_score"] = induction.icl_score(adapter, docs)
    files = result.save(run_dir)
    write_json(
        {**result.to_dict(), **({"icl_score": summary["icl_score"]} if "icl_score" in summary else {})},
        files["json"],
    )
    args = {
        "seq_len": seq_len,
        "batch": batch,
        "seed": seed,
        "icl_text": icl_text,
        "icl_documents": icl_documents,
    }
    return _finish("induction", adapter, run_dir, files, summary, args)


#: eval name (the CLI's too) -> runner
EVALS: dict[str, Callable[..., dict[str, Any]]] = {
    "niah": run_niah,
    "passkey": run_passkey,
    "lost-in-middle": run_lost_in_middle,
    "ppl": run_ppl,
    "lambada": run_lambada,
    "longbench": run_longbench,
    "induction": run_induction,
}
