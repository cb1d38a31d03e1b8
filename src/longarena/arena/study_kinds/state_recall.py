"""Study "state_recall": multi-query associative recall accuracy vs recurrent state size.

Zoology's figure (Arora et al. 2023): a few causal mixers, each at a few widths, are trained
briefly as small LMs on MQAR (task "mqar"); each trained model is a point at x = the numbers
its backbone carries per sequence after the task's length (``backbone.state_size(T)``: a
KV cache for attention, grows with T; a fixed recurrent state for the others), y = validation
recall accuracy. Points of one mixer are joined in order of width.

Config keys (defaults: the quick suite's, under a minute on 2 CPU cores; the accuracies are
modest at this budget, but they are real trained numbers):

- ``mixers`` ("attention", "retnet", "s4d", "hyena"): causal mixers
- ``widths`` (16, 32): model widths (d_model) per mixer
- ``n_layers`` 2
- ``task_config`` {"vocab_size": 32, "num_pairs": 4, "length": 32, "n_validation": 128}: MQAR
  fields; ``n_train`` defaults to ``steps * batch_size`` (every step sees new examples)
- ``steps`` 200, ``batch_size`` 32, ``lr`` 3e-3, ``warmup`` 10, ``seed`` 0, ``device`` "cpu"
- ``mixer_config`` {}: per-mixer config overrides (e.g. {"attention": {"n_heads": 2}})
- ``threads`` None: torch CPU threads during the study (None: leave as is; 1 is often faster on a busy CPU)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from longarena import mixers, tasks
from longarena.arena.plots import markdown_table, plain_log_ticks, pyplot, save_png
from longarena.arena.study_base import StudyResult, register
from longarena.arena.study_kinds.common import torch_threads
from longarena.config import Config, ConfigError

TASK_DEFAULTS = {"vocab_size": 32, "num_pairs": 4, "length": 32, "n_validation": 128}


@dataclasses.dataclass
class StateRecallConfig(Config):
    mixers: tuple[str, ...] = ("attention", "retnet", "s4d", "hyena")
    widths: tuple[int, ...] = (16, 32)
    n_layers: int = 2
    task_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 200
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 10
    seed: int = 0
    device: str = "cpu"
    mixer_config: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    threads: int | None = None

    def validate(self) -> None:
        self.mixers, self.widths = tuple(self.mixers), tuple(self.widths)
        unknown = [m for m in self.mixers if m not in mixers.names()]
        if unknown or not self.mixers:
            raise ConfigError(f"unknown mixer(s) {unknown or '(none given)'}; known mixers: {', '.join(mixers.names())}")
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ConfigError(f"widths must be positive integers, got {list(self.widths)}")
        if self.n_layers < 1 or self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"need n_layers, steps, batch_size >= 1 and lr > 0; got {self.n_layers}, {self.steps}, "
                              f"{self.batch_size}, {self.lr}")

    def task(self):
        fields = {**TASK_DEFAULTS, "n_train": self.steps * self.batch_size, "seed": self.seed, **self.task_config}
        return tasks.get("mqar", **fields)


def train_point(c: StateRecallConfig, task, mixer: str, width: int) -> dict[str, Any]:
    """Train one (mixer, width) LM on the task; its state size at the task's length and its accuracy."""
    from longarena.models.backbone import ModelConfig
    from longarena.train.objective import TrainConfig, model_for_task
    from longarena.train.trainer import train

    overrides = c.mixer_config.get(mixer, {})
    torch.manual_seed(c.seed)
    model = model_for_task(task, ModelConfig(d_model=width, n_layers=c.n_layers, pattern=(mixer,),
                                             mixer={mixer: overrides} if overrides else {}))
    if not all(layer.mixer.causal for layer in model.backbone.layers):
        raise ConfigError(f"mixer {mixer!r} is not causal; recall as an LM needs a causal mixer")
    start = time.perf_counter()
    result = train(model, task, TrainConfig(steps=c.steps, batch_size=c.batch_size, lr=c.lr, warmup=c.warmup,
                                            seed=c.seed, device=c.device, eval_batches=8))
    return {
        "mixer": mixer,
        "d_model": width,
        "state_size": int(model.backbone.state_size(task.seq_len)),
        "accuracy": float(result.final["accuracy"]),
        "loss": float(result.final["loss"]),
        "parameters": int(result.parameters),
        "seconds": time.perf_counter() - start,
    }


def plot(points: list[dict[str, Any]], chance: float, path: Path, subtitle: str) -> Path:
    """Accuracy vs state size (log x), one line per mixer through its widths."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for mixer in dict.fromkeys(p["mixer"] for p in points):
        mine = sorted((p for p in points if p["mixer"] == mixer), key=lambda p: p["d_model"])
        ax.plot([p["state_size"] for p in mine], [p["accuracy"] for p in mine], "-o", label=mixer)
        for p in mine:
            ax.annotate(f"d={p['d_model']}", (p["state_size"], p["accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ax.axhline(chance, color="gray", ls=":", lw=1, label="chance")
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    ax.set_ylim(0, 1)
    ax.set_xlabel("recurrent state size (numbers per sequence at the task length)")
    ax.set_ylabel("MQAR recall accuracy")
    ax.set_title(f"Recall vs state size\n{subtitle}", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_png(fig, path)


@register("state_recall")
def study(config: dict[str, Any], out_dir: Path, progress: bool) -> StudyResult:
    c = StateRecallConfig.from_dict(config)
    task = c.task()
    tc = task.config
    chance = 1.0 / (tc.vocab_size - tc.vocab_size // 2)  # values are drawn from the upper half of the vocabulary
    points, failed = [], {}
    for mixer in c.mixers:
        for width in c.widths:
            try:
                with torch_threads(c.threads):
                    points.append(train_point(c, task, mixer, width))
            except Exception as exc:  # one mixer that cannot train must not hide the others' points
                failed[f"{mixer}@{width}"] = f"{type(exc).__name__}: {exc}"
                continue
            if progress:
                p = points[-1]
                print(f"  {mixer:<12} d={width:<4} state {p['state_size']:>8,}  acc {p['accuracy']:.3f}  "
                      f"({p['seconds']:.1f}s)", flush=True)
    subtitle = (f"MQAR: {tc.num_pairs} pairs, length {tc.length}, vocab {tc.vocab_size}; {c.n_layers} layers, "
                f"{c.steps} steps x {c.batch_size}")
    figures = [plot(points, chance, out_dir / "state_recall.png", subtitle).name] if points else []
    rows = [[p["mixer"], p["d_model"], f"{p['state_size']:,}", f"{p['accuracy']:.3f}", f"{p['loss']:.3f}",
             f"{p['parameters']:,}", f"{p['seconds']:.1f}"] for p in points]
    parts = [markdown_table(["mixer", "d_model", "state size", "accuracy", "loss", "params", "seconds"], rows),
             (f"Each point is one model trained for {c.steps} steps on MQAR ({subtitle}); chance is {chance:.3f}. "
              "Further right means more numbers carried per sequence; higher means better recall. Zoology's finding "
              "is that recall tracks state size: attention's KV cache buys recall with memory that grows with "
              "the length, while fixed-state mixers trade recall for constant memory.")]
    if failed:
        parts.append("Not trained: " + "; ".join(f"`{k}`: {v}" for k, v in failed.items()))
    data = {"points": points, "chance": chance, "task": tc.to_dict(), "config": c.to_dict(), "failed": failed}
    return StudyResult("state_recall", "Recall vs state size (MQAR)", data, figures, "\n\n".join(parts))
