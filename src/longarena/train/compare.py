"""Compare the loss curves of two run folders (e.g. one GPU against two under DDP).

``python -m longarena.train.compare runs/one runs/two`` prints the steps both logged, the
largest and mean relative gap between their training losses, and both final validation
metrics; it exits 1 when the runs did not log the same steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from longarena.jsonl import read_records


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run} a run folder of `longarena train --out`?")
    return read_records(path)


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Relative gaps between the training losses logged at the same steps, and the finals."""
    la = {r["step"]: r["loss"] for r in a if "loss" in r}
    lb = {r["step"]: r["loss"] for r in b if "loss" in r}
    common = sorted(set(la) & set(lb))
    gaps = [abs(la[s] - lb[s]) / max(abs(la[s]), 1e-12) for s in common]
    final = lambda rows: next((r for r in reversed(rows) if r.get("final")), {})
    return {
        "steps": len(common),
        "same_steps": set(la) == set(lb),
        "max_rel_gap": max(gaps, default=float("nan")),
        "mean_rel_gap": sum(gaps) / len(gaps) if gaps else float("nan"),
        "last_loss": (la[common[-1]], lb[common[-1]]) if common else None,
        "final_a": {k: v for k, v in final(a).items() if k.startswith(("val_", "test_"))},
        "final_b": {k: v for k, v in final(b).items() if k.startswith(("val_", "test_"))},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    args = parser.parse_args(argv)
    try:
        result = compare(read_metrics(args.run_a), read_metrics(args.run_b))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"steps compared       {result['steps']} (same steps logged: {result['same_steps']})")
    print(f"train loss rel. gap  max {result['max_rel_gap']:.2e}, mean {result['mean_rel_gap']:.2e}")
    if result["last_loss"]:
        print(f"last train loss      {result['last_loss'][0]:.4f} vs {result['last_loss'][1]:.4f}")
    for key in sorted(set(result["final_a"]) | set(result["final_b"])):
        print(f"final {key:<14} {result['final_a'].get(key, float('nan')):.4f} vs {result['final_b'].get(key, float('nan')):.4f}")
    return 0 if result["same_steps"] else 1


if __name__ == "__main__":
    sys.exit(main())
