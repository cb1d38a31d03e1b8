"""Does every cell of the ``lra`` suite run on this machine? The suite at LRA lengths, cut short.

    python benchmarks/lra_suite_check.py                          # every cell, 20 steps, 2,048 examples
    python benchmarks/lra_suite_check.py --tasks pathx --mixers performer,bigbird,longformer

Each cell keeps its model, batch (and micro-batches) and sequence length; only the step
count and the generated split sizes shrink, so what fails here (an out-of-memory error at
16k tokens, a mixer that cannot take the task) fails in the real suite. Writes the arena
report to ``--out`` and prints one line per cell.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from longarena.arena.runner import run_suite
from longarena.arena.suites import Suite, get_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--examples", type=int, default=2048, help="training examples per task")
    parser.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    parser.add_argument("--mixers", default="", help="comma-separated mixers (default: all)")
    parser.add_argument("--out", default="runs/lra-suite-check")
    args = parser.parse_args()

    lra = get_suite("lra")
    sizes = dict(n_train=args.examples, n_validation=256, n_test=64)
    cells = tuple(
        dataclasses.replace(c, task_config={**c.task_config, **sizes},
                            train={**c.train, "steps": args.steps, "warmup": min(2, args.steps), "test_batches": 0})
        for c in lra.cells
        if not args.tasks or c.task in args.tasks.split(",")
    )
    only = [m for m in args.mixers.split(",") if m] or None
    if only:
        cells = tuple(c for c in cells if set(c.mixers) & set(only))
    start = time.perf_counter()
    run_suite(Suite(name="lra-check", description=lra.description, cells=cells), args.out, fresh=True,
              only=only, log=print)
    print(f"total {time.perf_counter() - start:.0f}s; report in {args.out}")


if __name__ == "__main__":
    main()
