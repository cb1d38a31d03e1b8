"""Generation speed of the task generators (examples/s), and haystack budget accuracy.

    python benchmarks/task_generation.py --n 400 --workers 1 2
    python benchmarks/task_generation.py --tasks listops --n 96000 --workers 2   # the full split
    python benchmarks/task_generation.py --haystack --tokenizer-dir DIR --gguf FILE

Splits are generated with caching off, so every run measures generation. The haystack
mode builds needle probes at 1k-16k tokens with a real tokenizer (a Hugging Face folder or
a GGUF file such as SmolLM2's) and reports how far each prompt lands from its budget and
its needle from the requested depth. Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

os.environ.setdefault("LONGARENA_CACHE", "off")

from longarena import tasks  # noqa: E402
from longarena.tasks import probes  # noqa: E402

DEFAULT_TASKS = {
    "listops": {},
    "pathfinder32": {},
    "pathfinder64": {},
    "pathx": {},
    "mqar": {"vocab_size": 8192, "num_pairs": 64, "length": 512},
    "selective_copying": {"length": 4096},
    "induction_heads": {"length": 256},
}


def _cpu() -> float:
    return time.process_time() + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime


def speed(names: list[str], n: int, workers: list[int]) -> list[dict]:
    rows = []
    for name in names:
        for w in workers:
            # shards small enough that every worker gets some
            task = tasks.get(name, **DEFAULT_TASKS.get(name, {}), n_train=n)
            task.shard_size = max(1, min(task.shard_size, -(-n // (4 * w))))
            start, cpu0 = time.perf_counter(), _cpu()
            ds = task.split("train", workers=w, progress=False)
            seconds, cpu = time.perf_counter() - start, _cpu() - cpu0
            # CPU seconds (this process + workers, worker start-up included) do not depend on
            # how busy the machine is; wall seconds do
            rows.append(
                {
                    "task": name,
                    "n": len(ds),
                    "workers": w,
                    "seconds": round(seconds, 2),
                    "cpu_seconds": round(cpu, 2),
                    "examples_per_s": round(len(ds) / seconds, 1),
                    "examples_per_cpu_s": round(len(ds) / cpu, 1),
                }
            )
            print(
                f"{name:18s} n={len(ds):7d} workers={w}  {seconds:8.2f} s wall {cpu:8.2f} s cpu  "
                f"{len(ds) / seconds:9.1f} ex/s  {len(ds) / cpu:9.1f} ex/cpu-s",
                flush=True,
            )
    return rows


def haystack(tokenizer, lengths: list[int], depths: list[float]) -> list[dict]:
    count = probes.token_counter(tokenizer)
    rows = []
    for length in lengths:
        for depth in depths:
            start = time.perf_counter()
            p = probes.make_needle(length, depth, seed=0, tokenizer=tokenizer)
            seconds = time.perf_counter() - start
            assert count(p.prompt) == p.tokens
            rows.append(
                {
                    "budget": length,
                    "depth": depth,
                    "tokens": p.tokens,
                    "short_by": length - p.tokens,
                    "depth_reached": round(p.depth, 4),
                    "seconds": round(seconds, 2),
                }
            )
            print(
                f"budget {length:6d} depth {depth:4.2f}: {p.tokens:6d} tokens "
                f"(short by {length - p.tokens}), needle at {p.depth:.4f}, {seconds:.2f} s",
                flush=True,
            )
    return rows


def load_tokenizer(folder: str | None, gguf: str | None):
    if folder is None:
        return None
    from transformers import AutoTokenizer

    return (
        AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        if gguf
        else AutoTokenizer.from_pretrained(folder)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=list(DEFAULT_TASKS))
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument(
        "--haystack", action="store_true", help="measure needle budgets instead of generation speed"
    )
    ap.add_argument("--tokenizer-dir", default=None)
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--lengths", type=int, nargs="*", default=[1000, 2000, 4000, 8000, 16000])
    ap.add_argument("--depths", type=float, nargs="*", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--out", default="task_generation.json")
    args = ap.parse_args()
    if args.haystack:
        result = {
            "haystack": haystack(load_tokenizer(args.tokenizer_dir, args.gguf), args.lengths, args.depths)
        }
    else:
        result = {
            "speed": speed(args.tasks, args.n, args.workers),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
