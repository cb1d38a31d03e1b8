"""Forward time and peak memory against sequence length: the low-rank / kernel family vs exact attention.

Each model is run forward (inference mode, batch 1) at growing lengths T on CPU:
Performer (causal chunked and bidirectional), Linformer, Nyströmformer, the Perceiver
classifier, and exact softmax attention two ways — PyTorch SDPA (a fused kernel that never
stores the T x T scores, but still does O(T²) work) and the materialised reference (which
stores them, O(T²) memory: run while its predicted size fits ``--max-exact-gb``).

Peak memory is the rise of the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs`` before each run, Linux only) over its size before the run. So
that freed memory really leaves the process (and a later run's allocations show up), glibc
is told to serve every allocation above 64 KiB by mmap and to trim its heap eagerly. Time
is the process's CPU time (``time.process_time``, so that other processes sharing the
machine do not inflate it; with ``--threads 1`` it equals the compute time), the least of
``--repeats`` runs.

    python benchmarks/low_rank_scaling.py                      # T = 1k .. 32k
    python benchmarks/low_rank_scaling.py --lengths 1024 4096  # quick

Prints a table, writes JSON (``--json``) and a plot (``--plot``).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import pathlib
import platform
import time

import torch

from longarena import mixers, models

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _return_freed_memory_to_the_os() -> None:
    """mallopt: fixed 64 KiB mmap threshold (no dynamic raise) and a small trim threshold."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.mallopt(m_trim_threshold, 128 * 1024)


def _status_kib(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(fn, repeats: int) -> tuple[float, float]:
    """(least CPU seconds, largest peak memory rise in MiB) of ``fn()`` over ``repeats`` runs."""
    times, peaks = [], []
    for _ in range(repeats):
        gc.collect()
        before = _status_kib("VmRSS")
        pathlib.Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
        peaks.append((_status_kib("VmHWM") - before) / 1024)
    return min(times), max(peaks)


def builders(d: int, heads: int, budget: int, max_len: int) -> dict:
    """name -> (callable(T) -> forward closure, kind)."""

    def mixer(name, **cfg):
        m = mixers.get(name, d, n_heads=heads, **cfg).eval()

        def make(t):
            x = torch.randn(1, t, d)
            return lambda: m(x)

        return make

    perceiver = models.get(
        "perceiver", vocab_size=256, num_classes=2, d_model=d, d_latent=d, n_latents=budget, n_heads=heads,
        n_cross_heads=1, n_latent_layers=2, n_repeats=1,
    ).eval()

    def perceiver_make(t):
        ids = torch.randint(0, 256, (1, t))
        return lambda: perceiver(ids)

    return {
        "performer (causal)": mixer("performer", n_features=budget, causal=True),
        "performer (bidir.)": mixer("performer", n_features=budget, causal=False),
        "linformer": mixer("linformer", proj_len=budget, max_len=max_len),
        "nystromformer": mixer("nystromformer", n_landmarks=budget),
        "perceiver": perceiver_make,
        "attention (sdpa)": mixer("attention", causal=False, position="none", backend="sdpa"),
        "attention (reference)": mixer("attention", causal=False, position="none", backend="reference"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--budget", type=int, default=64, help="features / proj_len / landmarks / latents")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-exact-gb", type=float, default=3.0, help="skip the materialised reference beyond this")
    parser.add_argument("--max-sdpa-len", type=int, default=16384, help="skip SDPA (O(T²) time) beyond this")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "benchmarks/results/low_rank_scaling.json")
    parser.add_argument("--plot", type=pathlib.Path, default=ROOT / "docs/figures/low_rank_scaling.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _return_freed_memory_to_the_os()
    torch.manual_seed(0)

    makers = builders(args.d_model, args.heads, args.budget, max(args.lengths))
    results = []
    with torch.inference_mode():
        for name, make in makers.items():
            for t in args.lengths:
                # scores (B, H, T, T) float32, about three live copies (scores, softmax, mask)
                predicted_gb = 3 * args.heads * t * t * 4 / 2**30
                skip = None
                if name == "attention (reference)" and predicted_gb > args.max_exact_gb:
                    skip = f"predicted {predicted_gb:.0f} GB of scores"
                if name == "attention (sdpa)" and t > args.max_sdpa_len:
                    skip = f"T > --max-sdpa-len {args.max_sdpa_len}"
                if skip:
                    results.append({"model": name, "seq_len": t, "seconds": None, "peak_mib": None, "skipped": skip})
                    continue
                fn = make(t)
                fn()  # warm-up
                seconds, peak = measure(fn, args.repeats)
                results.append({"model": name, "seq_len": t, "seconds": seconds, "peak_mib": peak})
                print(f"{name:>22} T={t:>6}: {seconds * 1e3:9.1f} ms  {peak:8.1f} MiB", flush=True)

    names = list(makers)
    print(f"\nforward, batch 1, d_model {args.d_model}, {args.heads} heads, budget {args.budget}, "
          f"{args.threads} thread(s): CPU ms / peak MiB")
    print(f"{'T':>7} " + " ".join(f"{n:>22}" for n in names))
    for t in args.lengths:
        cells = []
        for n in names:
            r = next(r for r in results if r["model"] == n and r["seq_len"] == t)
            cells.append(f"{'skipped':>22}" if r["seconds"] is None else f"{r['seconds'] * 1e3:>11.1f} /{r['peak_mib']:>8.1f}")
        print(f"{t:>7} " + " ".join(cells))
    lo, hi = min(args.lengths), max(args.lengths)
    print(f"\ngrowth from T={lo} to T={hi} ({hi // lo}x the tokens): time ratio, memory ratio")
    for n in names:
        a = next(r for r in results if r["model"] == n and r["seq_len"] == lo)
        b = [r for r in results if r["model"] == n and r["seconds"] is not None][-1]
        if a["seconds"] is None or b is a:
            continue
        mem = b["peak_mib"] / a["peak_mib"] if a["peak_mib"] > 0.5 else float("nan")
        print(f"{n:>22}: T={b['seq_len']}: time x{b['seconds'] / a['seconds']:.1f}, memory x{mem:.1f}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {"d_model": args.d_model, "heads": args.heads, "budget": args.budget, "threads": args.threads,
                "repeats": args.repeats, "torch": torch.__version__, "machine": platform.machine()}
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {args.json}")
    plot(results, names, args.plot)
    print(f"wrote {args.plot}")


def plot(results: list[dict], names: list[str], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for n in names:
        pts = [r for r in results if r["model"] == n and r["seconds"] is not None]
        if not pts:
            continue
        style = "--" if n.startswith("attention") else "-"
        xs = [r["seq_len"] for r in pts]
        ax_t.loglog(xs, [r["seconds"] * 1e3 for r in pts], style, marker="o", markersize=3, label=n)
        ax_m.loglog(xs, [max(r["peak_mib"], 0.1) for r in pts], style, marker="o", markersize=3, label=n)
    ax_t.set(xlabel="sequence length T", ylabel="forward CPU time (ms)", title="time")
    ax_m.set(xlabel="sequence length T", ylabel="peak memory rise (MiB)", title="memory")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", lw=0.3)
    ax_m.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
