"""Segment memory on CPU: remember a fact across N segments, each model with memory on vs off.

A fact token sits in the first segment; the query at the end of the last segment asks
for it (``longarena.tasks.segment_probes.fact_recall``; chance = 1 / n_facts). Each memory model
is trained twice with the same seed and budget: with its memory carried between segments
(full back-propagation through segments) and with the memory reset at every segment
(``carry=False``: the same model, memory switched off). Accuracy is on 1024 held-out
sequences. A second table measures the activation memory autograd keeps while training
with bptt=1 over more and more segments (flat), and the carried state size.

    python benchmarks/memory_recall.py                 # ~18 min on 2 busy CPU cores
    python benchmarks/memory_recall.py --segments 8 --models rmt --steps 600 --curriculum
    python benchmarks/memory_recall.py --steps 100 --models rmt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

import longarena.memory  # noqa: F401  (registers the memory models)
from longarena import models
from longarena.memory.runner import SavedTensorMeter, run_segments, state_numel, train_segments
from longarena.tasks.segment_probes import FactRecallConfig, fact_recall

SEGMENT = 8


def model_configs(vocab: int) -> dict[str, dict]:
    base = dict(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, segment_len=SEGMENT)
    return {
        # one layer of cache reaches 2 segments back, so the fact is read straight from memory
        "transformer_xl": dict(base, mem_len=2 * SEGMENT),
        # 8 recent states plus 8 compressed (2:1, mean) cover 3 segments
        "compressive": dict(base, mem_len=SEGMENT, cmem_len=SEGMENT, compression_rate=2, compression="mean"),
        "rmt": dict(base, num_mem_tokens=4),
        "memformer": dict(base, n_slots=8),
    }


def train_and_score(
    name: str, config: dict, task: FactRecallConfig, *, carry: bool, steps: int, batch: int, seed: int, curriculum: bool = False
) -> dict:
    """Train on the probe and score held-out accuracy; ``curriculum`` grows N from 2 to
    ``task.n_segments`` over the first two thirds of the steps (as the RMT paper trains)."""
    torch.manual_seed(seed)
    model = models.get(name, **config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 20)
        n = task.n_segments
        if curriculum:
            n = min(n, 2 + (n - 1) * step * 3 // (2 * steps))
        ids, labels = fact_recall(dataclasses.replace(task, n_segments=n), batch, gen)
        optimizer.zero_grad(set_to_none=True)
        loss = train_segments(model, ids, labels, bptt=None, carry=carry)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    ids, labels = fact_recall(task, 1024, torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        logits = run_segments(model, ids, carry=carry).logits[:, -1]
    accuracy = float((logits.argmax(-1) == labels[:, -1]).float().mean())
    return {"accuracy": accuracy, "final_train_loss": loss, "train_seconds": round(seconds, 1)}


def memory_profile(name: str, config: dict, vocab: int) -> dict:
    torch.manual_seed(0)
    model = models.get(name, **config)
    rows = {}
    for n in (4, 8, 16, 32):
        ids = torch.randint(0, vocab, (8, n * SEGMENT))
        with SavedTensorMeter() as meter:
            train_segments(model, ids, bptt=1)
        with torch.no_grad():
            state = run_segments(model, ids, keep_logits=False).state
        rows[n] = {"peak_saved_bytes": meter.peak, "state_numbers": state_numel(state) // 8}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--segments", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--models", nargs="+", default=["transformer_xl", "compressive", "rmt", "memformer"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curriculum", action="store_true", help="grow N from 2 during training")
    parser.add_argument("--out", default="benchmarks/results/memory_recall.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    results: dict = {"args": vars(args), "recall": [], "memory": {}}
    print(f"{'model':16} {'N':>3} {'memory on':>10} {'memory off':>11} {'chance':>7} {'sec':>6}")
    for n in args.segments:
        task = FactRecallConfig(n_segments=n, segment_len=SEGMENT)
        configs = model_configs(task.vocab_size)
        for name in args.models:
            on = train_and_score(name, configs[name], task, carry=True, steps=args.steps, batch=args.batch, seed=args.seed,
                                  curriculum=args.curriculum)
            off = train_and_score(name, configs[name], task, carry=False, steps=args.steps, batch=args.batch, seed=args.seed,
                                   curriculum=args.curriculum)
            row = {"model": name, "segments": n, "on": on, "off": off, "chance": 1 / task.n_facts}
            results["recall"].append(row)
            print(f"{name:16} {n:>3} {on['accuracy']:>10.3f} {off['accuracy']:>11.3f} {1 / task.n_facts:>7.3f} "
                  f"{on['train_seconds'] + off['train_seconds']:>6.0f}", flush=True)

    print(f"\n{'model':16} " + " ".join(f"{'N=' + str(n) + ' peak KiB':>14}" for n in (4, 8, 16, 32)) + f" {'state':>8}")
    vocab = FactRecallConfig(segment_len=SEGMENT).vocab_size
    for name in args.models:
        rows = memory_profile(name, model_configs(vocab)[name], vocab)
        results["memory"][name] = rows
        print(f"{name:16} " + " ".join(f"{rows[n]['peak_saved_bytes'] / 1024:>14.0f}" for n in rows)
              + f" {rows[32]['state_numbers']:>8}", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
