"""Named suites of arena cells."""

from __future__ import annotations

import dataclasses
from typing import Any

from longarena.config import Config, ConfigError
from longarena.train.loop import TrainConfig


@dataclasses.dataclass
class Cell(Config):
    """One comparison: ``mixers`` each train the same model shape on ``task``.

    ``mixers`` may be the string ``"causal"`` / ``"all"`` to mean every registered mixer
    (causal ones only for LM tasks). ``mixer_overrides`` holds per-mixer config changes
    that keep the comparison fair (e.g. a head count that divides ``d_model``).
    """

    task: str = "associative_recall"
    task_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    mixers: Any = "all"
    d_model: int = 64
    n_layers: int = 2
    mixer_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: whole registered models compared beside the mixers (e.g. "perceiver" on classification),
    #: built with this cell's d_model and the task's vocabulary/classes, plus these overrides
    models: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.train)


@dataclasses.dataclass
class Suite(Config):
    name: str = "quick"
    description: str = ""
    cells: tuple[Cell, ...] = ()


def _quick() -> Suite:
    return Suite(
        name="quick",
        description=(
            "Every mixer on two small synthetic tasks, same shape and budget: associative "
            "recall (causal mixers, as LMs) and majority (every mixer, as classifiers)."
        ),
        cells=(
            Cell(
                task="associative_recall",
                task_config=dict(vocab_size=16, num_pairs=4, num_queries=4, n_train=16384, n_validation=256),
                mixers="causal",
                d_model=64,
                n_layers=2,
                # a budget that keeps the suite to minutes on 2 CPU cores. Attention solves this
                # task only after an induction phase transition (batch 256, lr 1e-3: by step 300
                # on an H100 host's CPU, not within 500 steps on this CPU), so at this budget it
                # usually stays near 0.37 while mixers with a short convolution (H3, Hyena, Mega)
                # or decay (RetNet) solve it; longer runs are the arena issue's suites
                train=dict(steps=300, batch_size=128, lr=1e-3, warmup=30),
            ),
            Cell(
                task="majority",
                task_config=dict(num_classes=4, length=32, n_train=2048, n_validation=256),
                mixers="all",
                d_model=32,
                n_layers=1,
                mixer_overrides={"nystromformer": {"n_landmarks": 8}},
                models={"perceiver": {"n_latents": 8, "d_latent": 32, "n_latent_layers": 1}},
                train=dict(steps=150, batch_size=64, lr=3e-3, warmup=15),
            ),
        ),
    )


def _smoke() -> Suite:
    """A seconds-long suite for tests and for checking an installation."""
    return Suite(
        name="smoke",
        description="A few steps per mixer: checks that every mixer trains end to end.",
        cells=(
            Cell(
                task="associative_recall",
                task_config=dict(vocab_size=16, num_pairs=2, num_queries=2, n_train=64, n_validation=32),
                mixers="causal",
                d_model=32,
                n_layers=1,
                train=dict(steps=3, batch_size=16, warmup=1, eval_batches=1),
            ),
            Cell(
                task="majority",
                task_config=dict(num_classes=3, length=16, n_train=64, n_validation=32),
                mixers="all",
                d_model=32,
                n_layers=1,
                mixer_overrides={"nystromformer": {"n_landmarks": 4}},
                models={"perceiver": {"n_latents": 4, "d_latent": 32, "n_latent_layers": 1}},
                train=dict(steps=3, batch_size=16, warmup=1, eval_batches=1),
            ),
        ),
    )


SUITES = {"quick": _quick, "smoke": _smoke}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; known suites: {', '.join(sorted(SUITES))}")
    return SUITES[name]()
