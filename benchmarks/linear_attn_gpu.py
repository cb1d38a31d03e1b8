"""Decayed linear attention kernels on a CUDA GPU, side by side with fla in the same run.

    python benchmarks/linear_attn_gpu.py                      # check, then op timings vs fla
    python benchmarks/linear_attn_gpu.py --lengths 1024 65536 --subjects ours_retention fla_chunk_retention
    python benchmarks/linear_attn_gpu.py --mixers             # also retnet / mamba2 / attention mixers

1. Correctness on the GPU: the Triton kernels against the torch chunked path (itself tested
   against the loop reference in CI) in fp32 and bf16, every decay form, with a carried-in
   state and T not a multiple of the chunk: relative RMS error of o, the final state and every
   gradient.
2. Op timings at the anchor shapes of ``shared/anchors`` (B*T = 65,536 tokens, 16 heads x 64,
   bf16, forward+backward, inputs laid out (B, T, H, K) as fla takes them; ours reads the same
   memory through a transposed view): median of CUDA-event timings after warm-up, peak memory,
   first-call time. fla's first call autotunes (minutes): it is warmed once per length, apart.
3. (``--mixers``) the ``retnet``, ``mamba2`` and ``attention`` mixers at d_model 1024,
   batch 1, bf16, forward+backward, at the given lengths (and 1,048,576 tokens with --million).

Every row is written to ``$OUT/linear_attn_gpu.jsonl`` (or ./linear_attn_gpu.jsonl) as it
finishes, so a timeout loses nothing that was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from longarena.ops.linear_attn import linear_attention  # noqa: E402
from longarena.ops.linear_attn.retention import default_gammas  # noqa: E402

H, D, TOKENS = 16, 64, 2**16
START = time.perf_counter()
SINK = open(pathlib.Path(os.environ.get("OUT", ".")) / "linear_attn_gpu.jsonl", "a")


def emit(rec: dict) -> None:
    rec["at_s"] = round(time.perf_counter() - START, 1)
    line = json.dumps(rec)
    print(line, flush=True)
    SINK.write(line + "\n")
    SINK.flush()


def timed(fn, warmup: int = 3, reps: int = 10) -> tuple[float, float]:
    """(median ms, peak GiB) of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2], torch.cuda.max_memory_allocated() / 2**30


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check() -> None:
    for mode in ("none", "gamma", "log_decay"):
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator(device="cuda").manual_seed(0)
            b, h, t, dk, dv = 2, 4, 1000, 64, 128

            def leaf(*shape):
                return torch.randn(*shape, device="cuda", generator=g)

            base = [leaf(b, h, t, dk), leaf(b, h, t, dk) * 0.3, leaf(b, h, t, dv)]
            if mode == "log_decay":
                base.append(F.logsigmoid(leaf(b, h, t) + 3))
            s0 = leaf(b, h, dk, dv)
            w, ws = leaf(b, h, t, dv), leaf(b, h, dk, dv)
            results = {}
            for backend in ("chunked", "triton"):
                xs = [x.detach().clone().to(dtype if i < 3 else torch.float32).requires_grad_() for i, x in enumerate(base)]
                s = s0.clone().requires_grad_()
                kw = {"gamma": default_gammas(h).cuda()} if mode == "gamma" else {}
                if mode == "log_decay":
                    kw["log_decay"] = xs[3]
                o, s_last = linear_attention(*xs[:3], state=s, scale=dk**-0.5, backend=backend, **kw)
                ((o.float() * w).sum() + (s_last * ws).sum()).backward()
                results[backend] = [o, s_last] + [x.grad for x in xs] + [s.grad]
            errs = [rel(a, r) for a, r in zip(results["triton"], results["chunked"])]
            names = ["o", "S_last", "dq", "dk", "dv"] + (["dlog_decay"] if mode == "log_decay" else []) + ["dS0"]
            emit({"check": mode, "dtype": str(dtype), **{n: f"{e:.1e}" for n, e in zip(names, errs)}})


def ours(mode: str):
    def make(bsz: int, t: int):
        q, k, v = (torch.randn(bsz, t, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        kw = {}
        if mode == "retention":
            kw["gamma"] = default_gammas(H).cuda()
        elif mode == "log_decay":
            kw["log_decay"] = F.logsigmoid(torch.randn(bsz, H, t, device="cuda") + 3).requires_grad_()

        def run():
            o, _ = linear_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=D**-0.5, **kw)
            o.float().sum().backward()

        return run

    return make


def fla_retention(bsz: int, t: int):
    from fla.ops.retention import chunk_retention

    q, k, v = (torch.randn(bsz, t, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    return lambda: chunk_retention(q, k, v)[0].float().sum().backward()


def fla_simple_gla(bsz: int, t: int):
    from fla.ops.simple_gla import chunk_simple_gla

    q, k, v = (torch.randn(bsz, t, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = F.logsigmoid(torch.randn(bsz, t, H, device="cuda") + 3).requires_grad_()
    return lambda: chunk_simple_gla(q, k, v, g=g)[0].float().sum().backward()


def fla_gla(bsz: int, t: int):
    from fla.ops.gla import chunk_gla

    q, k, v = (torch.randn(bsz, t, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = F.logsigmoid(torch.randn(bsz, t, H, D, device="cuda")).requires_grad_()
    return lambda: chunk_gla(q, k, v, g=g)[0].float().sum().backward()


def sdpa(bsz: int, t: int):
    q, k, v = (torch.randn(bsz, H, t, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).float().sum().backward()


SUBJECTS = {
    "ours_retention": ours("retention"),
    "fla_chunk_retention": fla_retention,
    "ours_log_decay": ours("log_decay"),
    "fla_chunk_simple_gla": fla_simple_gla,
    "fla_chunk_gla": fla_gla,
    "ours_no_decay": ours("none"),
    "sdpa_flash": sdpa,
}


def op_timings(lengths: list[int], subjects: list[str]) -> None:
    for t in lengths:
        bsz = max(1, TOKENS // t)
        for name in subjects:
            rec = {"subject": name, "T": t, "B": bsz}
            try:
                fn = SUBJECTS[name](bsz, t)
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                rec["first_call_s"] = round(time.perf_counter() - t0, 2)
                ms, gib = timed(fn)
                rec.update(ms=round(ms, 3), peak_gib=round(gib, 3))
            except Exception as exc:  # a missing peer or an OOM is a row, not a stop
                rec["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            emit(rec)
            torch.cuda.empty_cache()


def mixer_timings(lengths: list[int], names: list[str]) -> None:
    from longarena import mixers

    for t in lengths:
        for name in names:
            if name == "attention" and t > 2**17:
                continue  # quadratic: seconds per call past 128k tokens, and not the question here
            rec = {"mixer": name, "T": t, "d_model": 1024}
            try:
                kw = {"n_heads": 16} if name in ("attention", "retnet") else {}
                m = mixers.get(name, 1024, **kw).cuda().to(torch.bfloat16)
                x = torch.randn(1, t, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)

                def run():
                    m(x)[0].float().sum().backward()

                t0 = time.perf_counter()
                run()
                torch.cuda.synchronize()
                rec["first_call_s"] = round(time.perf_counter() - t0, 2)
                ms, gib = timed(run, warmup=1, reps=3 if t > 2**18 else 10)
                rec.update(ms=round(ms, 2), peak_gib=round(gib, 2))
                del m, x
            except Exception as exc:
                rec["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            emit(rec)
            torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    p.add_argument("--subjects", nargs="+", default=list(SUBJECTS), choices=list(SUBJECTS))
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--mixers", nargs="*", default=None, help="mixer names to time (default none)")
    p.add_argument("--mixer-lengths", type=int, nargs="+", default=[65536])
    args = p.parse_args()
    emit({"torch": torch.__version__, "gpu": torch.cuda.get_device_name()})
    if not args.no_check:
        check()
    if args.subjects:
        op_timings(args.lengths, args.subjects)
    if args.mixers:
        mixer_timings(args.mixer_lengths, args.mixers)


if __name__ == "__main__":
    main()
