"""Mamba's Triton selective scan on a CUDA GPU: correctness against the torch chunked path,
then timings against the torch path and attention (SDPA). Needs torch + triton only; the
repository's src/ is put on the path by this script.

    python benchmarks/mamba_gpu.py                 # ~1-3 min on an H100 (Triton compiles first)
    python benchmarks/mamba_gpu.py --no-sweep --lengths 1024 4096

1. Correctness, fp32, B 2, T 2048, d_model 256 (E 512, N 16): the scan op (with a carried-in
   state) and the whole Mamba mixer, triton vs chunked: max |error| and relative RMS error of
   outputs, final states and every gradient; then the bf16 triton mixer vs the fp32 one.
2. Timings, bf16, batch 4, d_model 256: the Mamba mixer forward (no grad) and forward +
   backward on the triton and chunked backends, and the attention mixer (SDPA, 4 heads,
   RoPE) at T = 1k, 4k, 16k; median of CUDA-event timings after warm-up, peak memory of
   forward + backward; ratios printed as each length finishes.
3. (unless --no-sweep) the kernel's tile settings (:class:`Tiles`) on the scan op at T = 4k,
   forward and forward + backward, to pick the defaults on this GPU.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from longarena import mixers  # noqa: E402
from longarena.ops.scan import selective_scan  # noqa: E402
from longarena.ops.scan.selective_triton import Tiles  # noqa: E402

START = time.perf_counter()


def log(*args) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s]", *args, flush=True)


def cuda_ms(fn, warmup: int = 2, iters: int = 5) -> float:
    """Median milliseconds of ``fn()`` by CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def errors(name: str, got: torch.Tensor, want: torch.Tensor) -> dict:
    got, want = got.detach().double(), want.detach().double()
    rel = ((got - want).norm() / want.norm().clamp_min(1e-30)).item()
    out = {"what": name, "max_abs": (got - want).abs().max().item(), "rel_rms": rel}
    log(f"  {name:<28} max|err| {out['max_abs']:.3e}   rel {rel:.3e}")
    return out


def scan_inputs(bsz, t_len, e, n, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    kw = dict(device="cuda", generator=g)
    u = torch.randn(bsz, t_len, e, **kw)
    delta = torch.nn.functional.softplus(torch.randn(bsz, t_len, e, **kw) - 3)
    a = -torch.arange(1, n + 1, device="cuda", dtype=torch.float32).repeat(e, 1)
    b, c = torch.randn(bsz, t_len, n, **kw), torch.randn(bsz, t_len, n, **kw)
    d, h0 = torch.ones(e, device="cuda"), torch.randn(bsz, e, n, **kw)
    return [t.to(dtype) if t.dim() == 3 else t for t in (u, delta, a, b, c, d, h0)]


def scan_grads(backend, inputs, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y, h = selective_scan(*leaves, backend=backend, **kw)
    w = torch.randn(y.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    ((y.float() * w).sum() + h.float().sum()).backward()
    return [y.detach(), h.detach()] + [t.grad for t in leaves]


def mixer_grads(m, backend, x):
    x = x.detach().clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    with m.use_backend(backend):
        y, state = m(x)
    w = torch.randn(y.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(2))
    (y.float() * w).sum().backward()
    return {"y": y.detach(), "h_last": state.ssm, "dx": x.grad} | {
        f"d{name}": p.grad.clone() for name, p in m.named_parameters()
    }


def check(d_model: int, seq_len: int) -> list[dict]:
    log(f"1. correctness, fp32, B 2, T {seq_len}, d_model {d_model}: triton vs chunked")
    found = []
    inputs = scan_inputs(2, seq_len, 2 * d_model, 16, torch.float32)
    names = ("y", "h_last", "du", "ddelta", "dA", "dB", "dC", "dD", "dh0")
    ref, got = scan_grads("chunked", inputs), scan_grads("triton", inputs)
    log(" scan op (with h0)")
    found += [errors(f"scan {n}", g, r) for n, g, r in zip(names, got, ref)]
    torch.manual_seed(0)
    m = mixers.get("mamba", d_model).cuda()
    x = torch.randn(2, seq_len, d_model, device="cuda")
    ref, got = mixer_grads(m, "chunked", x), mixer_grads(m, "triton", x)
    log(" Mamba mixer")
    found += [errors(f"mixer {k}", got[k], ref[k]) for k in ref]
    log(" Mamba mixer, bf16 triton vs fp32 triton")
    m16 = mixers.get("mamba", d_model)
    m16.load_state_dict(m.state_dict())
    m16 = m16.cuda().to(torch.bfloat16)
    with torch.no_grad(), m16.use_backend("triton"), m.use_backend("triton"):
        y16, s16 = m16(x.to(torch.bfloat16))
        y32, s32 = m(x)
    found += [errors("bf16 mixer y", y16.float(), y32), errors("bf16 mixer h_last", s16.ssm, s32.ssm)]
    return found


def timings(d_model: int, batch: int, lengths: list[int]) -> list[dict]:
    log(f"2. timings, bf16, batch {batch}, d_model {d_model} (ms, median of 5)")
    torch.manual_seed(0)
    mamba = mixers.get("mamba", d_model).cuda().to(torch.bfloat16)
    attn = mixers.get("attention", d_model).cuda().to(torch.bfloat16)
    runs = {"triton": (mamba, "triton"), "chunked": (mamba, "chunked"), "attention": (attn, "auto")}
    header = (
        f"{'T':>6} | {'fwd triton':>10} {'chunked':>9} {'attn':>8} {'tri/attn':>8} {'chk/tri':>8} | "
        f"{'f+b triton':>10} {'chunked':>9} {'attn':>8} {'tri/attn':>8} {'chk/tri':>8} | peak GiB tri/chk/attn"
    )
    log(header)
    rows = []
    for t_len in lengths:
        x = torch.randn(batch, t_len, d_model, device="cuda", dtype=torch.bfloat16)
        row = {"T": t_len, "batch": batch, "d_model": d_model}
        for name, (m, backend) in runs.items():
            with m.use_backend(backend):
                with torch.no_grad():
                    row[f"fwd_{name}_ms"] = cuda_ms(lambda: m(x))
                xg = x.detach().clone().requires_grad_()

                def fwd_bwd():
                    m.zero_grad(set_to_none=True)
                    xg.grad = None
                    y, _ = m(xg)
                    y.float().sum().backward()

                torch.cuda.reset_peak_memory_stats()
                row[f"fwd_bwd_{name}_ms"] = cuda_ms(fwd_bwd, warmup=1, iters=3)
                row[f"peak_{name}_gib"] = torch.cuda.max_memory_allocated() / 2**30
        r = row
        log(
            f"{t_len:>6} | {r['fwd_triton_ms']:>10.2f} {r['fwd_chunked_ms']:>9.2f} {r['fwd_attention_ms']:>8.2f} "
            f"{r['fwd_triton_ms'] / r['fwd_attention_ms']:>7.2f}x {r['fwd_chunked_ms'] / r['fwd_triton_ms']:>7.1f}x | "
            f"{r['fwd_bwd_triton_ms']:>10.2f} {r['fwd_bwd_chunked_ms']:>9.2f} {r['fwd_bwd_attention_ms']:>8.2f} "
            f"{r['fwd_bwd_triton_ms'] / r['fwd_bwd_attention_ms']:>7.2f}x "
            f"{r['fwd_bwd_chunked_ms'] / r['fwd_bwd_triton_ms']:>7.1f}x | "
            f"{r['peak_triton_gib']:.2f}/{r['peak_chunked_gib']:.2f}/{r['peak_attention_gib']:.2f}"
        )
        rows.append(row)
    return rows


SWEEP = (
    Tiles(),
    Tiles(tile=1),  # a load per step, no tiles: what the tiles buy
    Tiles(block_e=4),
    Tiles(block_e=16),
    Tiles(tile=32),
    Tiles(tile=8),
    Tiles(num_warps=2),
)


def sweep(d_model: int, batch: int, t_len: int) -> list[dict]:
    log(f"3. kernel tiles, scan op only, bf16, batch {batch}, E {2 * d_model}, N 16, T {t_len} (ms)")
    inputs = scan_inputs(batch, t_len, 2 * d_model, 16, torch.bfloat16)
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    rows = []
    for tiles in SWEEP:
        with torch.no_grad():
            fwd = cuda_ms(lambda: selective_scan(*inputs, backend="triton", tiles=tiles))

        def fwd_bwd():
            y, h = selective_scan(*leaves, backend="triton", tiles=tiles)
            (y.float().sum() + h.sum()).backward()

        both = cuda_ms(fwd_bwd, warmup=1, iters=3)
        log(f"  {tiles}: fwd {fwd:8.3f}   fwd+bwd {both:8.3f}")
        rows.append({"tiles": str(tiles), "fwd_ms": fwd, "fwd_bwd_ms": both})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--check-len", type=int, default=2048)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--sweep-len", type=int, default=4096)
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "mamba_gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("mamba_gpu.py needs a CUDA GPU")
    import triton

    log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    out["errors"] = check(args.d_model, args.check_len)
    out["timings"] = timings(args.d_model, args.batch, args.lengths)
    if not args.no_sweep:
        out["sweep"] = sweep(args.d_model, args.batch, args.sweep_len)
    args.json.write_text(json.dumps(out, indent=2))
    log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
