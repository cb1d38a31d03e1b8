"""A small, complete training loop for LongArena models on LongArena tasks."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longarena import models
from longarena.config import Config, ConfigError
from longarena.models.backbone import ClassifierConfig, ModelConfig
from longarena.tasks.base import IGNORE, Task


@dataclasses.dataclass
class TrainConfig(Config):
    steps: int = 200
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 20
    grad_clip: float = 1.0
    eval_every: int = 0  # 0: evaluate only at the end
    eval_batches: int = 8
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        if self.steps < 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ConfigError(f"need steps >= 0, batch_size > 0, lr > 0; got {self.steps}, {self.batch_size}, {self.lr}")


@dataclasses.dataclass
class TrainResult:
    history: list[dict[str, float]]
    final: dict[str, float]
    seconds: float
    parameters: int


def model_for_task(task: Task, model: ModelConfig | dict[str, Any]) -> nn.Module:
    """The model head a task needs (LM, classifier or dual encoder) with its vocabulary/classes."""
    fields = model.to_dict() if isinstance(model, ModelConfig) else dict(model)
    fields["vocab_size"] = task.vocab_size
    if task.kind == "lm":
        for key in ("num_classes", "pooling"):
            fields.pop(key, None)
        return models.get("lm", config=ModelConfig.from_dict(fields))
    fields["num_classes"] = task.num_classes
    name = {"classification": "classifier", "retrieval": "dual_encoder"}.get(task.kind)
    if name is None:
        raise ValueError(f"task kind {task.kind!r} has no model head; expected lm, classification or retrieval")
    return models.get(name, config=ClassifierConfig.from_dict(fields))


def _logits(out: Any) -> Tensor:
    """Models return a ``ModelOutput`` or a bare logits tensor; the loop accepts both."""
    return out if isinstance(out, Tensor) else out.logits


def _run(model: nn.Module, batch: dict[str, Tensor], kind: str) -> tuple[Tensor, Tensor, Tensor]:
    """Loss, number correct and number scored for one batch.

    The loss is computed here from the logits, so any model with the head's call signature
    trains the same way (a LongArena backbone head, a Perceiver, a user's model).
    """
    if kind == "lm":
        logits = _logits(model(batch["input_ids"], attention_mask=batch["attention_mask"]))  # (B, T, V)
        labels = batch["labels"]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
        scored = labels != IGNORE
        correct = ((logits.argmax(-1) == labels) & scored).sum()
        return loss, correct, scored.sum()
    if kind == "classification":
        logits = _logits(model(batch["input_ids"], attention_mask=batch["attention_mask"]))  # (B, C)
    else:
        logits = _logits(model(
            batch["input_ids"], batch["input_ids_2"], attention_mask=batch["attention_mask"],
            attention_mask_2=batch["attention_mask_2"],
        ))
    loss = F.cross_entropy(logits.float(), batch["label"])
    correct = (logits.argmax(-1) == batch["label"]).sum()
    return loss, correct, torch.tensor(batch["label"].numel())


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str = "validation", *, batch_size: int = 64, max_batches: int | None = None, device: str = "cpu") -> dict[str, float]:
    """Mean loss and accuracy (scored tokens for LMs, sequences for classifiers) on a split."""
    was_training = model.training
    model.eval()
    total_loss, correct, scored, batches = 0.0, 0, 0, 0
    for i, batch in enumerate(task.loader(split, batch_size, shuffle=False)):
        if max_batches is not None and i >= max_batches:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, c, n = _run(model, batch, task.kind)
        total_loss += loss.item()
        correct += int(c)
        scored += int(n)
        batches += 1
    model.train(was_training)
    if batches == 0:
        raise ValueError(f"split {split!r} of {task!r} is empty; nothing to evaluate")
    return {"loss": total_loss / batches, "accuracy": correct / max(scored, 1)}


def _lr_at(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(model: nn.Module, task: Task, config: TrainConfig | None = None, *, progress: bool = False, description: str = "train") -> TrainResult:
    """Train ``model`` on ``task`` for ``config.steps`` steps; evaluate on the validation split."""
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98),
    )
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    step, epoch = 0, 0
    bar = _progress(progress)
    task_id = bar.add_task(description, total=config.steps) if bar else None
    try:
        while step < config.steps:
            for batch in task.loader("train", config.batch_size, seed=config.seed + epoch):
                if step >= config.steps:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(step, config)
                batch = {k: v.to(device) for k, v in batch.items()}
                loss, _, _ = _run(model, batch, task.kind)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate (now {config.lr})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                step += 1
                record = {"step": step, "loss": loss.item()}
                if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                    record.update({f"val_{k}": v for k, v in evaluate(model, task, max_batches=config.eval_batches, device=device).items()})
                history.append(record)
                if bar:
                    bar.update(task_id, advance=1, description=f"{description} loss {loss.item():.3f}")
            epoch += 1
    finally:
        if bar:
            bar.stop()
    final = evaluate(model, task, max_batches=config.eval_batches, device=device)
    params = sum(p.numel() for p in model.parameters())
    return TrainResult(history=history, final=final, seconds=time.perf_counter() - start, parameters=params)


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    bar.start()
    return bar
