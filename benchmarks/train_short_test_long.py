"""Train short, test long: one small LM per position scheme, trained at length L, scored at L, 2L, 4L, 8L.

The code lives in ``longarena.arena.study_kinds.train_short_test_long`` (the arena's
"train_short_test_long" study runs a smaller default of it); this script runs the long
version with every scheme, the zero-shot RoPE scalings and the PI fine-tuning comparison.

    python benchmarks/train_short_test_long.py            # a few minutes on one CPU core
    python benchmarks/train_short_test_long.py --steps 100 --multiples 1 4   # quick look
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from longarena.arena.study_kinds.train_short_test_long import (  # noqa: F401  (re-exported for the tests)
    TRAINED,
    ZERO_SHOT,
    LengthConfig,
    SwiGLU,
    TinyLM,
    TopicLanguage,
    nll,
    perplexity,
    plot,
    table,
    train,
    windows,
)
from longarena.arena.study_kinds.train_short_test_long import run as run_config

ROOT = Path(__file__).resolve().parents[1]


def run(args: argparse.Namespace) -> dict:
    fields = {k: v for k, v in vars(args).items() if k not in ("json", "plot")}
    return run_config(LengthConfig.from_dict(fields), log=lambda msg: print(msg, flush=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-len", type=int, default=32)
    p.add_argument("--multiples", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--schemes", nargs="+", default=list(TRAINED), choices=TRAINED)
    p.add_argument("--zero-shot", nargs="*", default=list(ZERO_SHOT), choices=ZERO_SHOT)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--vocab", type=int, default=32)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--eval-seqs", type=int, default=32)
    p.add_argument("--finetune-steps", type=int, default=60)
    p.add_argument("--finetune-points", type=int, default=3)
    p.add_argument("--finetune-multiple", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="more than 1 is much slower on a shared CPU")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/train_short_test_long.json")
    p.add_argument("--plot", type=Path, default=ROOT / "docs/figures/train_short_test_long.png")
    args = p.parse_args()
    result = run(args)
    print()
    print(table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    plot(result, args.plot)
    print(f"\nwrote {args.json} and {args.plot}")


if __name__ == "__main__":
    main()
