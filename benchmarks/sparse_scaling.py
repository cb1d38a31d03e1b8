"""Time and peak memory of sparse attention against sequence length, dense SDPA beside it.

Each (method, T, mode) runs in a fresh subprocess so that its peak resident memory is its
own: the peak counter (VmHWM) is reset just before the measured call and read after it.
``fwd`` times a forward pass; ``train`` a forward and backward pass. ``seconds`` is the
median CPU time of the process (one thread): on a shared machine it is far steadier than
wall time, which is recorded too (``wall_seconds``).

    OMP_NUM_THREADS=1 python benchmarks/sparse_scaling.py                 # 1k .. 32k
    python benchmarks/sparse_scaling.py --lengths 1024 2048 --methods sdpa longformer
    python benchmarks/sparse_scaling.py --pictures docs/img             # mask pictures only
    python benchmarks/sparse_scaling.py --replot benchmarks/results/sparse_scaling.json

Methods (B=1, H=4, K=16 by default; window 128 keys each side, tiles of 64):

- ``sdpa``: dense non-causal ``F.scaled_dot_product_attention`` (fused on CPU: O(T) memory,
  O(T^2) time);
- ``longformer``: window + one global token, gather kernel (``blocked``);
- ``bigbird``: block window (3 blocks of 64) + 64 global tokens + 3 random blocks, gather kernel;
- ``longt5``: window + T/16 transient global keys, gather kernel (O(T^2/16) by design);
- ``flex-longformer``: the longformer pattern on compiled ``flex_attention`` (forward only on
  CPU; compile time excluded);
- ``dense-masked``: the dense boolean-masked reference (O(T^2) memory), up to ``--dense-max``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("sdpa", "longformer", "bigbird", "longt5", "flex-longformer", "dense-masked")


def pattern_for(method: str, t: int, window: int, block: int):
    from longarena.ops.attention.patterns import BlockLocal, GlobalTokens, KeyRange, RandomBlocks, SlidingWindow

    if method in ("longformer", "flex-longformer", "dense-masked"):
        return SlidingWindow(window) | GlobalTokens((0,)), t
    if method == "bigbird":
        local = BlockLocal(block, 1) | GlobalTokens(tuple(range(block)))
        return local | RandomBlocks(block, 3, seed=0, n_heads=4, avoid=local), t
    if method == "longt5":
        n_glob = t // 16
        return (SlidingWindow(window) & KeyRange(0, t)) | KeyRange(t, t + n_glob), t + n_glob
    raise ValueError(method)


def _rss_peak_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def run_one(method: str, t: int, mode: str, heads: int, head_dim: int, window: int, block: int, reps: int) -> dict:
    """One measurement in this process: seconds (median of reps) and peak MiB above baseline."""
    import torch
    import torch.nn.functional as F

    from longarena.ops.attention.sparse import sparse_attention

    torch.manual_seed(0)
    train = mode == "train"
    if method != "sdpa":
        pattern, kv_len = pattern_for(method, t, window, block)
    else:
        pattern, kv_len = None, t
    q = torch.randn(1, heads, t, head_dim, requires_grad=train)
    k = torch.randn(1, heads, kv_len, head_dim, requires_grad=train)
    v = torch.randn(1, heads, kv_len, head_dim, requires_grad=train)

    def call():
        if method == "sdpa":
            return F.scaled_dot_product_attention(q, k, v)
        if method == "dense-masked":
            return sparse_attention(q, k, v, pattern, backend="reference")
        if method == "flex-longformer":
            return sparse_attention(q, k, v, pattern, backend="flex", block_size=128)
        return sparse_attention(q, k, v, pattern, backend="blocked", block_size=block, q_offset=0)

    def step():
        if train:
            y = call()
            y.sum().backward()
            q.grad = k.grad = v.grad = None
        else:
            with torch.no_grad():
                call()

    compile_s = None
    if method.startswith("flex"):
        start = time.perf_counter()
        step()  # compile at this shape
        compile_s = time.perf_counter() - start
    base = _status_kib("VmRSS")
    _rss_peak_reset()
    times, cpu = [], []
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        if cpu[-1] > 10:  # long dense runs: one is enough
            break
    peak = _status_kib("VmHWM")
    times.sort()
    cpu.sort()
    return {
        "method": method,
        "T": t,
        "mode": mode,
        "seconds": cpu[len(cpu) // 2],
        "wall_seconds": times[len(times) // 2],
        "peak_mib": max(peak - base, 0) / 1024,
        "compile_seconds": compile_s,
    }


def pictures(out_dir: Path) -> None:
    """One PNG per pattern (its mask at T=256) plus the composed patterns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from longarena.ops.attention.patterns import (
        BlockLocal,
        Geometry,
        GlobalTokens,
        KeyRange,
        RandomBlocks,
        SlidingWindow,
        dense_mask,
    )

    t = 256
    local = BlockLocal(8, 1) | GlobalTokens(tuple(range(8)))
    patterns = {
        "window": ("sliding window, w=16 each side", SlidingWindow(16), 1),
        "window_causal": ("causal sliding window, w=32", SlidingWindow(32, causal=True), 1),
        "dilated": ("dilated window, w=8,\ndilation 3 (2nd head of (1, 3))", SlidingWindow(8, dilation=(1, 3)), 2),
        "global": ("global tokens at 0 and 100", GlobalTokens((0, 100)), 1),
        "random_blocks": ("random blocks: blocks of 16, 2 per row", RandomBlocks(16, 2, seed=0), 1),
        "block_local": ("block-local, blocks of 32", BlockLocal(32), 1),
        "longformer": ("Longformer: window 16 + global CLS", SlidingWindow(16) | GlobalTokens((0,)), 1),
        "bigbird": (
            "BigBird, blocks of 8:\n3 local + 8 global + 2 random",
            local | RandomBlocks(8, 2, seed=0, avoid=local),
            1,
        ),
        "longt5": (
            "LongT5 TGlobal:\nwindow 16 + T/16 global keys",
            (SlidingWindow(16) & KeyRange(0, t)) | KeyRange(t, t + t // 16),
            1,
        ),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (title, pattern, heads) in patterns.items():
        kv = t + t // 16 if name == "longt5" else t
        mask = dense_mask(pattern.bind(Geometry(t, kv, 0, heads)))[0, heads - 1]
        fig, ax = plt.subplots(figsize=(3.2, 3.2 * t / kv + 0.4))
        ax.imshow(mask.float().numpy(), cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
        density = mask.float().mean().item()
        ax.set_title(f"{title}\n{100 * density:.1f}% of pairs", fontsize=7)
        ax.set_xlabel("key", fontsize=7)
        ax.set_ylabel("query", fontsize=7)
        ax.tick_params(labelsize=6)
        fig.tight_layout()
        fig.savefig(out_dir / f"sparse_{name}.png", dpi=110)
        plt.close(fig)
        print(f"wrote {out_dir / f'sparse_{name}.png'}")


def plot_scaling(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, method in enumerate(METHODS):
        for mode, style in (("train", "-o"), ("fwd", "--x")):
            pts = sorted((r["T"], r) for r in rows if r["method"] == method and r["mode"] == mode)
            if not pts:
                continue
            ts = [p[0] for p in pts]
            kw = dict(color=f"C{i}", label=f"{method} ({mode})")
            axes[0].plot(ts, [p[1]["seconds"] for p in pts], style, **kw)
            axes[1].plot(ts, [max(p[1]["peak_mib"], 0.1) for p in pts], style, **kw)
    for ax, ylabel in zip(axes, ("CPU seconds (1 thread)", "peak MiB above inputs")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6)
    fig.suptitle("Sparse attention vs dense SDPA on CPU (1 thread, B=1, H=4, K=16, window 128)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--modes", nargs="+", default=["fwd", "train"], choices=["fwd", "train"])
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dense-max", type=int, default=8192, help="longest T for the O(T^2)-memory reference")
    p.add_argument("--longt5-max", type=int, default=16384, help="longest T for longt5 (O(T^2/16) memory)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/sparse_scaling.json"))
    p.add_argument("--plot", type=Path, default=Path("docs/img/sparse_scaling.png"))
    p.add_argument("--pictures", type=Path, help="only draw the pattern masks into this folder")
    p.add_argument("--replot", type=Path, help="only redraw --plot from this JSON of an earlier run")
    p.add_argument("--one", nargs=3, metavar=("METHOD", "T", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.pictures:
        pictures(args.pictures)
        return
    if args.replot:
        plot_scaling(json.loads(args.replot.read_text())["rows"], args.plot)
        return
    if args.one:
        method, t, mode = args.one
        row = run_one(method, int(t), mode, args.heads, args.head_dim, args.window, args.block, args.reps)
        print(json.dumps(row))
        return

    rows = []
    print(f"{'method':>16} {'mode':>5} {'T':>6} {'cpu s':>9} {'wall s':>9} {'peak MiB':>9} {'vs sdpa':>8}")
    for t in args.lengths:
        sdpa = {}
        for method in args.methods:
            for mode in args.modes:
                if method.startswith("flex") and mode == "train":
                    continue  # no flex_attention backward on CPU
                if (method == "dense-masked" and t > args.dense_max) or (method == "longt5" and t > args.longt5_max):
                    continue
                cmd = [sys.executable, __file__, "--one", method, str(t), mode, "--heads", str(args.heads),
                       "--head-dim", str(args.head_dim), "--window", str(args.window), "--block", str(args.block),
                       "--reps", str(args.reps)]
                done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
                if done.returncode:
                    print(f"{method} {mode} T={t} failed:\n{done.stderr[-2000:]}")
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                if method == "sdpa":
                    sdpa[mode] = row["seconds"]
                ratio = row["seconds"] / sdpa[mode] if mode in sdpa else float("nan")
                print(
                    f"{method:>16} {mode:>5} {t:>6} {row['seconds']:>9.4f} {row['wall_seconds']:>9.4f} "
                    f"{row['peak_mib']:>9.1f} {ratio:>8.2f}",
                    flush=True,
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_scaling(rows, args.plot)


if __name__ == "__main__":
    main()
