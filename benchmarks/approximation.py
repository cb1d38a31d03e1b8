"""How close do the low-rank / kernel approximations get to exact softmax attention?

For the same queries, keys and values, each method's output is compared with exact
``softmax(QKᵀ/√K) V`` (relative error ``‖y - y_exact‖ / ‖y_exact‖``) as its budget grows:

- Performer (FAVOR+): random features M, mean over ``--draws`` feature draws;
- Nyströmformer: landmarks m, with the paper's 6-step iterative pseudo-inverse and with
  the exact ``torch.linalg.pinv``;
- Linformer: projected length k, with the untrained Gaussian projections it starts
  from (mean over draws) and with a mean-pooling projection (E = F = segment means,
  the identity at k = T).

Queries and keys have ``σ·N(0, 1)`` coordinates, so the attention logits have standard
deviation σ² (small σ: nearly uniform attention, large σ: peaked), in two kinds:
``iid`` (independent tokens: a full-rank attention matrix, the hardest case for low-rank
methods) and ``smooth`` (each coordinate a low-pass filtered Gaussian process along T, so
neighbouring tokens look alike, as in real sequences; the attention matrix is then close
to low rank). Values are always iid. The functional forms the mixers use are called
directly, without the learned q/k/v projections.

    python benchmarks/approximation.py                       # T = 1024, K = 64, 4 heads
    python benchmarks/approximation.py --seq-len 512 --sigmas 0.5 1.0

Prints a table, writes JSON (``--json``) and a log-log plot (``--plot``).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import time

import torch

from longarena.mixers.linformer import linformer_attention
from longarena.mixers.nystrom import nystrom_attention, segment_means_matrix
from longarena.ops.attention import attention_reference
from longarena.ops.linear_attn.favor import favor_features, linear_attention_chunked, orthogonal_gaussian
from longarena.testing.conformance import rel_error

ROOT = pathlib.Path(__file__).resolve().parent.parent


def performer_error(q, k, v, exact, n_features: int, draws: int, g: torch.Generator) -> list[float]:
    scale = q.shape[-1] ** -0.25
    errors = []
    for _ in range(draws):
        w = orthogonal_gaussian(n_features, q.shape[-1], generator=g)
        qf = favor_features(q * scale, w, kernel="softmax", is_query=True)
        kf = favor_features(k * scale, w, kernel="softmax", is_query=False)
        y, _ = linear_attention_chunked(qf, kf, v, causal=False)
        errors.append(rel_error(y, exact))
    return errors


def nystrom_error(q, k, v, exact, n_landmarks: int, pinv_iterations: int | None) -> list[float]:
    y = nystrom_attention(q, k, v, n_landmarks=n_landmarks, pinv_iterations=pinv_iterations, backend="reference")
    return [rel_error(y, exact)]


def linformer_jl_error(q, k, v, exact, proj_len: int, draws: int, g: torch.Generator) -> list[float]:
    h, t = q.shape[1], q.shape[2]
    errors = []
    for _ in range(draws):
        # the mixer's initialisation: independent N(0, 1/T) entries per head for E and F
        e = torch.randn(h, proj_len, t, generator=g) / math.sqrt(t)
        f = torch.randn(h, proj_len, t, generator=g) / math.sqrt(t)
        errors.append(rel_error(linformer_attention(q, k, v, e, f, backend="reference"), exact))
    return errors


def linformer_pool_error(q, k, v, exact, proj_len: int) -> list[float]:
    t = q.shape[2]
    # E = F = means of k segments: each segment's keys/values stand in for it (equal segments
    # when k divides T, which the power-of-two budgets ensure; identity at k = T)
    pool = segment_means_matrix(torch.ones(1, t, dtype=torch.bool), proj_len)  # (1, k, T)
    return [rel_error(linformer_attention(q, k, v, pool, pool, backend="reference"), exact)]


def make_qk(kind: str, sigma: float, heads: int, t: int, dk: int, g: torch.Generator) -> torch.Tensor:
    """(1, H, T, K) queries or keys of the given kind with unit-variance coordinates times sigma."""
    x = torch.randn(1, heads, t, dk, generator=g)
    if kind == "smooth":
        # keep the lowest T/64 frequencies of each coordinate's path along T
        spectrum = torch.fft.rfft(x, dim=2)
        spectrum[:, :, max(1, t // 64) :] = 0
        x = torch.fft.irfft(spectrum, n=t, dim=2)
        x = x / x.std(dim=2, keepdim=True)
    elif kind != "iid":
        raise ValueError(f"unknown input kind {kind!r}; known: iid, smooth")
    return sigma * x


def budgets_up_to(t: int, start: int) -> list[int]:
    out, b = [], start
    while b <= t:
        out.append(b)
        b *= 2
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4, help="independent heads, averaged")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 1.5])
    parser.add_argument("--inputs", nargs="+", default=["iid", "smooth"], choices=["iid", "smooth"])
    parser.add_argument("--draws", type=int, default=4, help="random draws for Performer and random-init Linformer")
    parser.add_argument("--max-features", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "benchmarks/results/approximation.json")
    parser.add_argument("--plot", type=pathlib.Path, default=ROOT / "docs/figures/low_rank_approximation.png")
    args = parser.parse_args()

    t, dk = args.seq_len, args.head_dim
    g = torch.Generator().manual_seed(args.seed)
    results = []
    start = time.time()
    regimes = [(kind, sigma) for kind in args.inputs for sigma in args.sigmas]
    for kind, sigma in regimes:
        q = make_qk(kind, sigma, args.heads, t, dk, g)
        k = make_qk(kind, sigma, args.heads, t, dk, g)
        v = torch.randn(1, args.heads, t, dk, generator=g)
        exact = attention_reference(q, k, v, causal=False)
        # the zero-budget baseline: uniform attention, every output the mean value
        uniform = rel_error(v.mean(2, keepdim=True).expand_as(exact), exact)
        results.append({"inputs": kind, "sigma": sigma, "method": "uniform (mean of V)", "budget": 0, "error": uniform, "std": 0.0, "draws": 1})
        runs = {
            "performer (FAVOR+)": [
                (m, performer_error(q, k, v, exact, m, args.draws, g)) for m in budgets_up_to(args.max_features, 16)
            ],
            "nystrom (6-step pinv)": [(m, nystrom_error(q, k, v, exact, m, 6)) for m in budgets_up_to(t, 8)],
            "nystrom (exact pinv)": [(m, nystrom_error(q, k, v, exact, m, None)) for m in budgets_up_to(t, 8)],
            "linformer (random init)": [
                (m, linformer_jl_error(q, k, v, exact, m, args.draws, g)) for m in budgets_up_to(t, 8)
            ],
            "linformer (mean-pool)": [(m, linformer_pool_error(q, k, v, exact, m)) for m in budgets_up_to(t, 8)],
        }
        for method, points in runs.items():
            for budget, errors in points:
                mean = sum(errors) / len(errors)
                std = (sum((e - mean) ** 2 for e in errors) / max(1, len(errors) - 1)) ** 0.5
                results.append({"inputs": kind, "sigma": sigma, "method": method, "budget": budget, "error": mean, "std": std,
                                    "draws": len(errors)})
        print(f"{kind} sigma={sigma}: done after {time.time() - start:.0f} s", flush=True)

    methods = list(dict.fromkeys(r["method"] for r in results if r["budget"]))
    budgets = sorted({r["budget"] for r in results if r["budget"]})
    for kind, sigma in regimes:
        print(f"\nrelative error vs exact softmax attention, T={t}, K={dk}, {kind} inputs, sigma={sigma} "
              f"(logit std {sigma**2:.2f})")
        here = [r for r in results if r["inputs"] == kind and r["sigma"] == sigma]
        base = next(r for r in here if r["budget"] == 0)
        print(f"baseline, uniform attention (mean of V): {base['error']:.4f}")
        print(f"{'budget':>8} " + " ".join(f"{m:>22}" for m in methods))
        for b in budgets:
            cells = []
            for m in methods:
                hit = [r for r in here if r["method"] == m and r["budget"] == b]
                cells.append(f"{hit[0]['error']:>22.4f}" if hit else f"{'-':>22}")
            print(f"{b:>8} " + " ".join(cells))

    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {"seq_len": t, "head_dim": dk, "heads": args.heads, "draws": args.draws, "seed": args.seed,
                "torch": torch.__version__, "machine": platform.machine(), "seconds": round(time.time() - start, 1)}
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"\nwrote {args.json}")
    plot(results, regimes, t, dk, args.plot)
    print(f"wrote {args.plot}")


def plot(results: list[dict], regimes: list[tuple[str, float]], t: int, dk: int, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(kind for kind, _ in regimes))
    sigmas = list(dict.fromkeys(sigma for _, sigma in regimes))
    fig, axes = plt.subplots(
        len(kinds), len(sigmas), figsize=(4.5 * len(sigmas), 3.6 * len(kinds)), sharey=True, squeeze=False
    )
    floor = 1e-5  # exact results (error 0) are drawn at this floor of the log axis
    for (kind, sigma) in regimes:
        ax = axes[kinds.index(kind)][sigmas.index(sigma)]
        here = [r for r in results if r["inputs"] == kind and r["sigma"] == sigma]
        base = next(r for r in here if r["budget"] == 0)
        ax.axhline(base["error"], color="black", lw=0.8, ls="--", label=base["method"])
        for method in dict.fromkeys(r["method"] for r in here if r["budget"]):
            pts = [r for r in here if r["method"] == method]
            xs = [r["budget"] for r in pts]
            ys = [max(r["error"], floor) for r in pts]
            ax.loglog(xs, ys, marker="o", markersize=3, label=method)
        ax.axvline(t, color="grey", lw=0.5, ls=":")
        ax.set_title(f"{kind} inputs, σ = {sigma} (logit std {sigma**2:.2f})", fontsize=9)
        ax.set_xlabel("budget: features M / landmarks m / projected length k", fontsize=8)
        ax.grid(True, which="both", lw=0.3)
    for row in axes:
        row[0].set_ylabel("relative error vs exact", fontsize=8)
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(f"Approximating softmax attention, T = {t}, head dim {dk}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
