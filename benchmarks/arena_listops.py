"""What the quick suite's short ListOps cell asks for: baselines that ignore order, and mixers.

    python benchmarks/arena_listops.py                         # baselines only (~1 min)
    python benchmarks/arena_listops.py --mixers attention,s4d  # + mixers at the cell's budget
    python benchmarks/arena_listops.py --mixers attention,s4d --steps 1000 --d-model 64 --layers 2
    # LRA's generator at 100-300 tokens: attention and Hyena pick up the bag signal, S4 not yet
    python benchmarks/arena_listops.py --task-config max_depth=10 max_args=10 operator_p=0.25 \
        min_length=100 max_length=300 n_train=8000 --mixers attention,hyena,s4 \
        --mixer-config s4.causal=false s4.kernel=diag hyena.max_len=512 \
        --steps 400 --d-model 64 --layers 2 --batch-size 32 --out /tmp/listops_300.json
    # the same, read out at the first token (the outermost operator): S4 learns
    python benchmarks/arena_listops.py ... (as above) --mixers s4,attention --pooling first
    # the S4 paper's block (post-norm BatchNorm, GLU output, no MLP)
    python benchmarks/arena_listops.py ... (as above) --mixers s4 --mixer-config s4.causal=false \
        s4.kernel=diag s4.output=glu --model-config norm=batch prenorm=false mlp=false

Reads the ListOps cell of the ``quick`` suite (so it always measures the suite's real task;
``--task-config`` changes its generator) and reports on its validation split:

- the most frequent class;
- a bag-of-tokens MLP (token counts -> 2 hidden layers of 256 -> 10 classes, AdamW), the
  best validation accuracy over its epochs: what needs no sequence mixing at all;
- the bag ceiling: for each example, the share of the most common answer over random
  re-assignments of its digits to the same tree's leaves. The generator draws digits iid,
  so these trees are equally likely; knowing the tree shape and the digit multiset is more
  than knowing the bag, so no bag-of-tokens model can beat the mean of this share;
- optionally, mixers trained like the arena cell (``--steps``/``--d-model``/``--layers``
  change the budget).

Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

import torch

from longarena.arena.runner import run_cell
from longarena.arena.suites import get_suite
from longarena.tasks import listops
from longarena.train.configfile import parse_sets


def bag_counts(split) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V) token counts and (N,) labels."""
    x = torch.stack([torch.bincount(ex["input_ids"], minlength=len(listops.VOCAB)).float() for ex in split])
    y = torch.tensor([int(ex["label"]) for ex in split])
    return x, y


def bag_mlp(train, validation, *, epochs: int, seed: int = 0) -> float:
    """Best validation accuracy of an MLP on token counts over ``epochs`` epochs."""
    x, y = bag_counts(train)
    xv, yv = bag_counts(validation)
    torch.manual_seed(seed)
    v = x.shape[1]
    model = torch.nn.Sequential(torch.nn.Linear(v, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.1)
    best = 0.0
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(128):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            best = max(best, (model(xv).argmax(-1) == yv).float().mean().item())
    return best


def bag_ceiling(validation, *, draws: int, seed: int = 0) -> float:
    """Mean over examples of the modal answer's share among digit re-assignments (see module doc)."""
    rng = random.Random(seed)
    shares = []
    for ex in validation:
        tokens = ex["input_ids"].tolist()
        slots = [i for i, t in enumerate(tokens) if listops.DIGIT0 <= t < listops.DIGIT0 + 10]
        digits = [tokens[i] for i in slots]
        answers: Counter[int] = Counter()
        for _ in range(draws):
            rng.shuffle(digits)
            for i, d in zip(slots, digits):
                tokens[i] = d
            answers[listops.evaluate(tokens)] += 1
        shares.append(max(answers.values()) / draws)
    return sum(shares) / len(shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", default="", help="comma-separated mixers to train like the arena cell")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the cell's)")
    parser.add_argument("--d-model", type=int, default=None, help="model width (default: the cell's)")
    parser.add_argument("--layers", type=int, default=None, help="model depth (default: the cell's)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the cell's)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the cell's)")
    parser.add_argument("--task-config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="ListOps generator fields over the cell's (e.g. min_length=100 max_length=300)")
    parser.add_argument("--mixer-config", nargs="*", default=[], metavar="MIXER.KEY=VALUE",
                        help="per-mixer config over the cell's (e.g. s4.causal=false)")
    parser.add_argument("--pooling", default=None, choices=("mean", "first", "last"), help="classifier read-out (default: mean)")
    parser.add_argument("--model-config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="backbone fields for every mixer (e.g. norm=batch prenorm=false mlp=false)")
    parser.add_argument("--epochs", type=int, default=40, help="bag-of-tokens MLP epochs")
    parser.add_argument("--draws", type=int, default=64, help="digit re-assignments per example for the ceiling")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/arena_listops.json"))
    args = parser.parse_args()

    cell = next(c for c in get_suite("quick").cells if c.task == "listops")
    from longarena import tasks

    cell = cell.replace(task_config={**cell.task_config, **parse_sets(args.task_config)})
    overrides = {k: dict(v) for k, v in cell.mixer_overrides.items()}
    for mixer, fields in parse_sets(args.mixer_config).items():
        if not isinstance(fields, dict):
            parser.error(f"--mixer-config takes MIXER.KEY=VALUE, got {mixer}={fields!r}")
        overrides.setdefault(mixer, {}).update(fields)
    cell = cell.replace(mixer_overrides=overrides)

    task = tasks.get(cell.task, **cell.task_config)
    train, validation = task.split("train"), task.split("validation")
    labels = Counter(int(ex["label"]) for ex in validation)
    rows = [("most frequent class", max(labels.values()) / len(validation), 0.0)]
    start = time.perf_counter()
    rows.append(("bag-of-tokens MLP", bag_mlp(train, validation, epochs=args.epochs), time.perf_counter() - start))
    start = time.perf_counter()
    rows.append(("bag ceiling (no bag model beats it)", bag_ceiling(validation, draws=args.draws), time.perf_counter() - start))
    changes = {}
    train_changes = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr)) if v is not None}
    if train_changes:
        changes["train"] = {**cell.train, **train_changes}
    if args.d_model is not None:
        changes["d_model"] = args.d_model
    if args.layers is not None:
        changes["n_layers"] = args.layers
    backbone = {**cell.backbone, **parse_sets(args.model_config)}
    if args.pooling is not None:
        backbone["pooling"] = args.pooling
    if backbone != cell.backbone:
        changes["backbone"] = backbone
    cell = cell.replace(**changes)
    for name in [n.strip() for n in args.mixers.split(",") if n.strip()]:
        r = run_cell(cell, name, task=task)
        pooled = "".join(f", {k}={v}" for k, v in cell.backbone.items())
        rows.append((f"{name} (d_model {cell.d_model} x {cell.n_layers}, {cell.train['steps']} steps{pooled})",
                     float("nan") if r.accuracy is None else r.accuracy, r.seconds))

    stats = listops.stats(validation)
    print(f"ListOps (quick-suite cell, with changes): {json.dumps(cell.task_config)}")
    print(f"validation: {stats['n']} trees, {stats['length_min']}-{stats['length_max']} tokens, depth <= {stats['depth_max']}")
    print(f"{'model':<58} {'accuracy':>8} {'seconds':>8}")
    for name, acc, secs in rows:
        print(f"{name:<58} {acc:8.3f} {secs:8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "task_config": cell.task_config, "train": cell.train, "d_model": cell.d_model, "n_layers": cell.n_layers,
        "backbone": cell.backbone,
        "mixer_overrides": cell.mixer_overrides,
        "validation": {k: v for k, v in stats.items() if k != "label_counts"},
        "rows": [{"model": n, "accuracy": a, "seconds": s} for n, a, s in rows],
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
