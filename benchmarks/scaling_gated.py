"""Time and peak memory of one forward of H3, Hyena, RetNet, Mega(-chunk) against T, on CPU.

    python benchmarks/scaling_gated.py --lengths 1024 4096 16384 65536 --d-model 32

Each mixer runs a forward (no gradients) on a (1, T, D) input; time is the median of
``--repeats`` runs after one warm-up, peak memory is the peak of process RSS growth
measured in a fresh subprocess per (mixer, T) so runs do not share allocator state.
Softmax attention (SDPA) is included as the quadratic peer. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

MIXERS = {
    "h3": dict(head_dim=1, d_state=16),
    "hyena": dict(order=2, filter_width=32),
    "retnet": dict(n_heads=4, chunk_size=64),
    "mega-chunk": dict(ndim=8, z_dim=32, chunk_size=128),
    "mega": dict(ndim=8, z_dim=32),
    "attention": dict(n_heads=4),
}


def measure(name: str, length: int, d_model: int, repeats: int) -> dict:
    """Runs in a subprocess: time of the forward and peak RSS growth above the baseline."""
    import resource

    import torch

    from longarena import mixers

    torch.manual_seed(0)
    registry_name = name.split("-")[0]
    m = mixers.get(registry_name, d_model, **MIXERS[name]).eval()
    x = torch.randn(1, length, d_model)
    with torch.no_grad():
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        m(x)  # warm-up (also the peak-memory run)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            m(x)
            times.append(time.perf_counter() - t0)
    return {"mixer": name, "T": length, "seconds": statistics.median(times), "peak_mib": (peak - base) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=list(MIXERS))
    parser.add_argument("--max-quadratic", type=int, default=16384, help="longest T for full-attention mixers")
    parser.add_argument("--out", default="scaling_gated.json")
    parser.add_argument("--one", nargs=2, metavar=("MIXER", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.d_model, args.repeats)))
        return
    rows = []
    for name in args.mixers:
        for length in args.lengths:
            if name in ("mega", "attention") and length > args.max_quadratic:
                continue
            cmd = [sys.executable, __file__, "--one", name, str(length), "--d-model", str(args.d_model), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{name} T={length} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{r['mixer']:>11} T={r['T']:>6}  {r['seconds'] * 1e3:9.1f} ms  {r['peak_mib']:8.1f} MiB", flush=True)
    print()
    print(f"{'mixer':>11} " + " ".join(f"{'T=' + str(t):>20}" for t in args.lengths))
    for name in args.mixers:
        cells = []
        for t in args.lengths:
            r = next((r for r in rows if r["mixer"] == name and r["T"] == t), None)
            cells.append(f"{r['seconds'] * 1e3:9.1f}ms {r['peak_mib']:6.0f}MiB" if r else f"{'-':>20}")
        print(f"{name:>11} " + " ".join(f"{c:>20}" for c in cells))
    with open(args.out, "w") as f:
        json.dump({"d_model": args.d_model, "rows": rows}, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
