"""What the training loop costs beside a bare PyTorch loop, and what its options cost.

Every variant trains the same model (seeded) on the same batches of the same task for the
same number of steps, in this process, one after another:

- ``bare``: a plain loop (collate, forward, loss, backward, clip, AdamW step): the peer;
- ``fit``: ``longarena.train.fit`` in fp32 (accelerate, the step's loss normalisation);
- ``fit+run``: the same with a run folder (a metrics line per step, a checkpoint every 25 steps);

Each is timed from the call to the end of its final evaluation (one batch).
- ``fit grad_accum=4``: four micro-batches per step;
- ``fit bf16``: bf16 autocast (on CPUs without bf16 units this is slower, not faster).

Prints a table of steps/s and the ratio to ``bare``, and writes JSON.

    OMP_NUM_THREADS=1 python benchmarks/train_loop.py --steps 60 --out benchmarks/results/train_loop.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from longarena import tasks
from longarena.models.backbone import ModelConfig
from longarena.train import TrainConfig, evaluate, fit, model_for_task
from longarena.train.objective import loss_sum, param_groups
from longarena.train.trainer import epoch_batches


def bare_loop(model: nn.Module, task, config: TrainConfig) -> float:
    """Seconds for ``config.steps`` plain steps over the same batches ``fit`` draws."""
    data = task.split("train")
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=tuple(config.betas))
    per_epoch = len(data) // config.batch_size
    start = time.perf_counter()
    for step in range(config.steps):
        epoch, b = divmod(step, per_epoch)
        idx = epoch_batches(len(data), config.batch_size, config.seed, epoch)[b]
        batch = task.collate([data[i] for i in idx.tolist()])
        loss, _, scored = loss_sum(model, batch, task.kind)
        (loss / scored).backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    evaluate(model, task, batch_size=config.eval_batch_size, max_batches=config.eval_batches)  # as fit ends
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    task = tasks.get("associative_recall", vocab_size=16, num_pairs=4, num_queries=4, n_train=4096, n_validation=64)
    shape = ModelConfig(d_model=args.d_model, n_layers=2, mixer={"attention": {"n_heads": 4}})
    base = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-3, warmup=5, eval_batches=1, device="cpu")

    def model():
        torch.manual_seed(0)
        return model_for_task(task, shape)

    rows = []
    seconds = bare_loop(model(), task, base)
    rows.append({"variant": "bare", "seconds": seconds})
    variants = [
        ("fit", base, False),
        ("fit+run", base.replace(checkpoint_every=25), True),
        ("fit grad_accum=4", base.replace(grad_accum=4), False),
        ("fit bf16", base.replace(precision="bf16"), False),
    ]
    for name, config, with_run in variants:
        with tempfile.TemporaryDirectory() as tmp:
            m = model()
            start = time.perf_counter()
            fit(m, task, config, run_dir=Path(tmp) / "run" if with_run else None)
            seconds = time.perf_counter() - start  # setup, steps, writes and the final evaluation
        rows.append({"variant": name, "seconds": seconds})
    bare = rows[0]["seconds"]
    print(f"{'variant':<18} {'steps/s':>8} {'vs bare':>8}")
    for r in rows:
        r["steps_per_s"] = args.steps / r["seconds"]
        r["ratio_to_bare"] = r["seconds"] / bare
        print(f"{r['variant']:<18} {r['steps_per_s']:8.1f} {r['ratio_to_bare']:8.2f}x")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"args": {k: str(v) for k, v in vars(args).items()}, "threads": torch.get_num_threads(),
                   "machine": platform.processor() or platform.machine(), "rows": rows}
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
