"""What a training run optimizes and how it is scored: the training configuration, the model
head per task, the loss, the learning-rate schedule and parameter groups, and the evaluation.

The loop itself is :mod:`.trainer` (``train`` for one call, ``fit`` for run folders with
metrics, checkpoints and exact resume); it builds on this module, never the reverse.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longarena import models
from longarena.config import Config, ConfigError
from longarena.constants import IGNORE
from longarena.models.backbone import CLASSIFIER_ONLY, ClassifierConfig, ModelConfig
from longarena.tasks.base import Task

PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
DISTRIBUTED = ("ddp", "fsdp")


@dataclasses.dataclass
class TrainConfig(Config):
    """Optimisation and bookkeeping of one training run.

    ``batch_size`` is the number of examples per optimizer step, whatever the number of
    processes and micro-batches: each step's batch is split into ``grad_accum``
    micro-batches, and each micro-batch into one shard per process, so a run gives the
    same updates on one device or several (up to float rounding).
    """

    steps: int = 200
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 20
    grad_clip: float = 1.0
    eval_every: int = 0  # 0: evaluate only at the end
    eval_batches: int = 8
    seed: int = 0
    #: "auto" takes the accelerator's device (a GPU when there is one), "cpu" forces the CPU
    device: str = "auto"
    #: "bf16" autocasts the forward pass to bfloat16 (parameters and optimizer stay fp32)
    precision: str = "fp32"
    grad_accum: int = 1
    #: learning rate of state-space parameters (S4/S5 A, B, step size; Mamba A, D); None: ``lr``
    ssm_lr: float | None = None
    eval_batch_size: int = 64
    #: batches of the test split scored once training ends (0: none; None: the whole split),
    #: reported as test_loss / test_accuracy beside the validation metrics
    test_batches: int | None = 0
    betas: tuple[float, ...] = (0.9, 0.98)
    #: with a run folder: write a metrics line every ``log_every`` steps, a checkpoint every
    #: ``checkpoint_every`` steps (and at the end), keeping the newest ``keep_checkpoints``
    log_every: int = 1
    checkpoint_every: int = 500
    keep_checkpoints: int = 1
    #: how several processes share the model: "ddp" replicates it, "fsdp" shards each
    #: backbone block's parameters, gradients and AdamW state over the processes (FSDP2);
    #: with one process both are a plain run
    distributed: str = "ddp"

    def validate(self) -> None:
        if self.steps < 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ConfigError(f"need steps >= 0, batch_size > 0, lr > 0; got {self.steps}, {self.batch_size}, {self.lr}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        if self.distributed not in DISTRIBUTED:
            raise ConfigError(f"distributed must be one of {', '.join(DISTRIBUTED)}; got {self.distributed!r}")
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ConfigError(
                f"grad_accum must be >= 1 and divide batch_size (the examples per step); "
                f"got grad_accum={self.grad_accum}, batch_size={self.batch_size}"
            )
        for name in ("warmup", "eval_every", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("eval_batches", "eval_batch_size", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ssm_lr is not None and self.ssm_lr <= 0:
            raise ConfigError(f"ssm_lr must be > 0 (or null for the main lr), got {self.ssm_lr}")
        if self.test_batches is not None and self.test_batches < 0:
            raise ConfigError(f"test_batches must be >= 0 (or null for the whole test split), got {self.test_batches}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0 (0: only at the end), got {self.checkpoint_every}")
        self.betas = tuple(self.betas)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")


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
        for key in CLASSIFIER_ONLY:
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


def scored_count(batch: dict[str, Tensor], kind: str) -> int:
    """How many targets a batch scores: labelled tokens for LMs, sequences otherwise."""
    if kind == "lm":
        return int((batch["labels"] != IGNORE).sum())
    return int(batch["label"].numel())


def loss_sum(model: nn.Module, batch: dict[str, Tensor], kind: str) -> tuple[Tensor, Tensor, int]:
    """Summed cross-entropy over the batch's scored targets, number correct, number scored.

    A sum rather than a mean, so micro-batches and process shards of one step add up to
    exactly the loss of the whole batch once divided by the step's total scored count.
    The loss is computed here from the logits, so any model with the head's call
    signature trains the same way (a LongArena backbone head, a Perceiver, a user's model).
    """
    if kind == "lm":
        logits = _logits(model(batch["input_ids"], attention_mask=batch["attention_mask"]))  # (B, T, V)
        labels = batch["labels"]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        scored = labels != IGNORE
        return loss, ((logits.argmax(-1) == labels) & scored).sum(), int(scored.sum())
    if kind == "classification":
        logits = _logits(model(batch["input_ids"], attention_mask=batch["attention_mask"]))  # (B, C)
    else:
        logits = _logits(model(
            batch["input_ids"], batch["input_ids_2"], attention_mask=batch["attention_mask"],
            attention_mask_2=batch["attention_mask_2"],
        ))
    loss = F.cross_entropy(logits.float(), batch["label"], reduction="sum")
    return loss, (logits.argmax(-1) == batch["label"]).sum(), int(batch["label"].numel())


@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: Task,
    split: str = "validation",
    *,
    batch_size: int = 64,
    max_batches: int | None = None,
    device: str | torch.device | None = None,
    accelerator: Any = None,
) -> dict[str, float]:
    """Mean per-batch loss and accuracy (scored tokens for LMs, sequences for classifiers).

    Batches go to ``device`` (default: where the model's parameters are).

    With an ``accelerator`` of several processes, process ``r`` scores batches ``r, r + P,
    ...`` and the sums are reduced, so the result equals a single process's.
    """
    was_training = model.training
    model.eval()
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    if accelerator is not None:
        device = accelerator.device
    elif device is None:
        device = next(model.parameters()).device
    sums = torch.zeros(4, dtype=torch.float64)  # loss of each batch, correct, scored, batches
    for i, batch in enumerate(task.loader(split, batch_size, shuffle=False)):
        if max_batches is not None and i >= max_batches:
            break
        if i % world != rank:
            continue
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, correct, scored = loss_sum(model, batch, task.kind)
        sums += torch.tensor([loss.item() / max(scored, 1), int(correct), scored, 1], dtype=torch.float64)
    model.train(was_training)
    if accelerator is not None and world > 1:
        sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    total_loss, correct, scored, batches = sums.tolist()
    if batches == 0:
        raise ValueError(f"split {split!r} of {task!r} is empty; nothing to evaluate")
    return {"loss": total_loss / batches, "accuracy": correct / max(scored, 1)}


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to zero at ``steps``."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


_lr_at = lr_at


#: state-space parameters (the recurrence's A, B, P and step size; Mamba's A and D): no
#: weight decay, and ``ssm_lr`` as their learning rate, as the S4 and Mamba papers train them
SSM_PARAMETERS: dict[str, tuple[str, ...]] = {
    "s4": ("log_neg_re", "lam_im", "b", "p", "log_dt"),
    "s4d": ("log_neg_re", "lam_im", "b", "log_dt"),
    "s5": ("log_neg_re", "lam_im", "b", "log_dt"),
    "mamba": ("A_log", "D"),
    "mamba2": ("A_log", "D", "dt_bias"),
}


def _ssm_parameter_ids(model: nn.Module) -> set[int]:
    from longarena import mixers

    classes = {mixers.REGISTRY.factory(name): names for name, names in SSM_PARAMETERS.items()}
    ids: set[int] = set()
    for module in model.modules():
        names = classes.get(type(module))
        if names:
            ids.update(id(p) for n, p in module.named_parameters(recurse=False) if n in names)
    return ids


def param_groups(model: nn.Module, weight_decay: float, ssm_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: matrices decay; norms, biases and embeddings (1-D or named embed) do not;
    state-space parameters (``SSM_PARAMETERS``) do not, at ``ssm_lr_scale`` times the lr.

    Each group carries ``lr_scale``, its learning rate relative to the schedule's.
    """
    ssm = _ssm_parameter_ids(model)
    decay, no_decay, state_space = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in ssm:
            state_space.append(p)
        else:
            (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    if state_space:
        groups.append({"params": state_space, "weight_decay": 0.0, "lr_scale": ssm_lr_scale})
    return groups
