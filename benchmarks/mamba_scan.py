"""Mamba on CPU: chunked selective scan vs the sequential reference, and forward memory vs T.

Two measurements:

1. **Speed** at ``--seq-len`` (default 4096) for each of ``--batches`` (default 1 and 4):
   the selective scan op (:func:`longarena.ops.scan.selective_scan`) on Mamba-shaped inputs
   (E = 2 d_model inner channels, N = 16 states), ``reference`` (a Python loop over t) vs
   ``chunked``, for a forward without gradients and a forward + backward; and the whole
   Mamba mixer forward with each backend. Best of ``--repeats`` wall-clock runs, single
   thread; the two backends of a row run back to back, so their ratio is the figure to read
   on a shared machine.
2. **Memory** at ``--mem-lens`` (default 4k, 16k, 64k): each length runs in a fresh
   subprocess, which builds the mixer and its input, resets the kernel's RSS high-water mark
   (``/proc/self/clear_refs``), runs one forward (``no_grad``: inference; ``grad``:
   training, activations kept for backward) and reports the high-water mark (``VmHWM``)
   minus the resident set size just before: every byte the forward made resident at its
   peak (outputs, workspaces, saved activations), counted by the OS, not by an allocator.
   (``ru_maxrss`` is not used: Linux carries it over from the parent across ``exec``.)
   Linear growth shows as a constant bytes/token.

    python benchmarks/mamba_scan.py                        # d_model 16 and 64, batch 1 and 4, T = 4096
    python benchmarks/mamba_scan.py --d-models 64 --mem-lens 4096 16384 65536 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parent.parent
LABELS = (("scan_fwd", "scan forward"), ("scan_fwd_bwd", "scan forward+backward"), ("mixer_fwd", "mixer forward"))


def scan_inputs(d_model: int, seq_len: int, batch: int, d_state: int = 16, requires_grad: bool = False):
    g = torch.Generator().manual_seed(0)
    e = 2 * d_model
    u = torch.randn(batch, seq_len, e, generator=g)
    delta = F.softplus(torch.randn(batch, seq_len, e, generator=g) - 4)
    a = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(e, 1)
    b = torch.randn(batch, seq_len, d_state, generator=g)
    c = torch.randn(batch, seq_len, d_state, generator=g)
    d = torch.ones(e)
    leaves = [u, delta, a, b, c, d]
    return [t.requires_grad_(requires_grad) for t in leaves]


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def speed(d_model: int, seq_len: int, batch: int, repeats: int) -> dict:
    from longarena import mixers
    from longarena.ops.scan import selective_scan

    row = {"d_model": d_model, "E": 2 * d_model, "N": 16, "T": seq_len, "batch": batch}
    backends = ("reference", "chunked")
    # each measurement times both backends back to back, so a change in the machine's load
    # moves both
    args = scan_inputs(d_model, seq_len, batch)
    for backend in backends:
        with torch.no_grad():
            row[f"scan_fwd_{backend}_s"] = best_time(lambda: selective_scan(*args, backend=backend), repeats)
    args = scan_inputs(d_model, seq_len, batch, requires_grad=True)
    for backend in backends:

        def fwd_bwd():
            y, h = selective_scan(*args, backend=backend)
            (y.sum() + h.sum()).backward()

        row[f"scan_fwd_bwd_{backend}_s"] = best_time(fwd_bwd, repeats)
    torch.manual_seed(0)
    m = mixers.get("mamba", d_model)
    x = torch.randn(batch, seq_len, d_model)
    for backend in backends:
        with torch.no_grad(), m.use_backend(backend):
            row[f"mixer_fwd_{backend}_s"] = best_time(lambda: m(x), repeats)
    for key in ("scan_fwd", "scan_fwd_bwd", "mixer_fwd"):
        row[f"{key}_speedup"] = row[f"{key}_reference_s"] / row[f"{key}_chunked_s"]
    return row


def _status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (its high-water mark) of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(d_model: int, seq_len: int, mode: str) -> None:
    """Runs in a subprocess: prints the peak-RSS growth of one Mamba forward, in bytes."""
    from longarena import mixers

    torch.manual_seed(0)
    m = mixers.get("mamba", d_model)
    x = torch.randn(1, seq_len, d_model, requires_grad=mode == "grad")
    with torch.no_grad():
        m(x[:, :64])  # first-call allocations (thread pools, kernels) before the baseline
    # reset the high-water mark to the current RSS (Linux >= 4.0), so the peak is this forward's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_bytes("VmRSS")
    if mode == "grad":
        y, _ = m(x)
    else:
        with torch.no_grad():
            y, _ = m(x)
    peak = _status_bytes("VmHWM")
    print(json.dumps({"bytes": max(peak - base, 0)}))


def memory(d_model: int, seq_len: int, mode: str) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(d_model), str(seq_len), mode],
        capture_output=True, text=True, env=env, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-models", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mem-lens", type=int, nargs="*", default=[4096, 16384, 65536])
    parser.add_argument("--mem-d-model", type=int, default=64)
    default_json = ROOT / "benchmarks" / "results" / "mamba_scan.json"
    parser.add_argument("--json", type=pathlib.Path, default=default_json)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        memory_child(int(args.child[0]), int(args.child[1]), args.child[2])
        return
    torch.set_num_threads(1)

    print(f"speed, T = {args.seq_len}, 1 thread, best of {args.repeats} (seconds)")
    print(
        f"{'d_model':>7} {'E*N':>6} {'batch':>5} | {'what':<22} "
        f"{'reference':>10} {'chunked':>10} {'speedup':>8}"
    )
    rows = []
    for d in args.d_models:
        for batch in args.batches:
            r = speed(d, args.seq_len, batch, args.repeats)
            rows.append(r)
            for key, label in LABELS:
                print(
                    f"{r['d_model']:>7} {r['E'] * r['N']:>6} {batch:>5} | {label:<22} "
                    f"{r[key + '_reference_s']:>10.4f} {r[key + '_chunked_s']:>10.4f} "
                    f"{r[key + '_speedup']:>7.1f}x",
                    flush=True,
                )

    mem_rows = []
    for mode in ("no_grad", "grad"):
        for t in args.mem_lens:
            got = memory(args.mem_d_model, t, mode)
            b = got["bytes"]
            mem_rows.append(
                {"mode": mode, "T": t, "d_model": args.mem_d_model, "bytes": b, "bytes_per_token": b / t}
            )
    if mem_rows:
        print(f"\nforward peak-RSS growth, Mamba d_model {args.mem_d_model}, batch 1, chunked backend")
        print(f"{'mode':<8} {'T':>7} {'MiB':>9} {'KiB/token':>10}")
        for r in mem_rows:
            mib, kib_tok = r["bytes"] / 2**20, r["bytes_per_token"] / 1024
            print(f"{r['mode']:<8} {r['T']:>7} {mib:>9.1f} {kib_tok:>10.2f}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
            "threads": 1, "load_average": os.getloadavg()}
    args.json.write_text(json.dumps({"meta": meta, "speed": rows, "memory": mem_rows}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
