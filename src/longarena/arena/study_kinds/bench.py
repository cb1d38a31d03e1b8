"""Study "bench": time and peak memory vs sequence length of a few mixers and the installed peers.

A small CPU sweep of :func:`longarena.arena.bench.run_bench`; the report gets log-log plots of
time and memory vs length (one panel per mode, one line per mixer or peer) and tables of
every cell as a multiple of the baseline measured in the same run.

Config keys (defaults: the quick suite's, about a minute on 2 CPU cores):

- ``mixers`` ("attention", "mamba", "s4d", "retnet", "hyena", "performer", "longformer")
- ``lengths`` (256, 1024, 4096)
- ``modes`` ("fwd", "fwd_bwd"); "step" adds decode-step latency
- ``peers`` ("auto",): every installed peer ("none" for none, or peer names)
- ``baseline`` "attention"
- ``d_model`` 64, ``batch`` 1, ``device`` "cpu", ``dtype`` "float32", ``repeats`` 2
- ``memory`` True: peak memory (CPU: one subprocess per mixer)
- ``mixer_config`` {}: per-mixer config overrides
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longarena.arena.bench import BenchConfig, BenchReport, run_bench
from longarena.arena.plots import markdown_table
from longarena.arena.study_base import StudyResult, register

DEFAULTS: dict[str, Any] = {
    "mixers": ("attention", "mamba", "s4d", "retnet", "hyena", "performer", "longformer"),
    "lengths": (256, 1024, 4096),
    "modes": ("fwd", "fwd_bwd"),
    "repeats": 2,
}


def pivot(report: BenchReport, field: str, mode: str) -> str:
    """Markdown: one row per subject, one column per length; cells "value (ratio x)"."""
    lengths = sorted({r.seq_len for r in report.results})
    ratio_key = "time_ratio" if field == "ms" else "memory_ratio"
    ratios = {(q["subject"], q["seq_len"], q["mode"]): q[ratio_key] for q in report.ratios()}
    rows = []
    for subject in report.subjects():
        cells = {r.seq_len: r for r in report.results if r.mixer == subject and r.mode == mode}
        if not cells:
            continue
        row = [subject + (" (peer)" if next(iter(cells.values())).kind == "peer" else "")]
        for n in lengths:
            r = cells.get(n)
            value = getattr(r, field) if r is not None else None
            if value is None:
                row.append(r.status if r is not None and r.status != "ok" else "")
                continue
            ratio = ratios.get((subject, n, mode))
            row.append(f"{value:.1f}" + (f" ({ratio:.2f}x)" if ratio is not None else ""))
        rows.append(row)
    return markdown_table([f"{mode}" if field == "ms" else f"{mode} (MiB)"] + [f"T={n}" for n in lengths], rows)


@register("bench")
def study(config: dict[str, Any], out_dir: Path, progress: bool) -> StudyResult:
    c = BenchConfig.from_dict({**DEFAULTS, **config})
    show = (lambda r: print(f"  {r.mixer:<16} T={r.seq_len:<6} {r.mode:<8} "
                            + (f"{r.ms:9.2f} ms" if r.ms is not None else r.status), flush=True)) if progress else None
    report = run_bench(c, progress=show)
    figures = [p.name for p in report.plot(out_dir, prefix="bench")]
    base = c.baseline
    parts = [(f"Milliseconds per call on {report.device_name} ({c.dtype}, d_model {c.d_model}, batch {c.batch}, "
              f"median of {c.repeats} after a warm-up), and in brackets the multiple of `{base}` at the same length "
              "and mode, measured in the same run. On the log-log plots a slope of 1 is linear in T, 2 quadratic; "
              "dashed lines are peers (outside implementations).")]
    for mode in c.modes:
        parts.append(pivot(report, "ms", mode))
    if any(r.peak_mb is not None for r in report.results):
        parts.append("Peak memory above the resident set before the call (MiB), as a multiple of the baseline's:")
        for mode in c.modes:
            parts.append(pivot(report, "peak_mb", mode))
    failed = [r for r in report.results if r.status in ("error", "oom")]
    if failed:
        parts.append("Failed cells: " + "; ".join(f"`{r.mixer}` T={r.seq_len} {r.mode}: {r.error}" for r in failed))
    if report.peers_missing:
        parts.append("Peers not measured: " + "; ".join(f"`{k}` {v}" for k, v in report.peers_missing.items()) + ".")
    return StudyResult("bench", "Speed and memory vs sequence length", report.to_dict(), figures, "\n\n".join(parts))
