"""The training loop: the right head per task kind, a schedule that warms up and decays,
loss that falls, evaluation that scores only labelled positions."""

from __future__ import annotations

import pytest
import torch

from longarena import tasks
from longarena.config import ConfigError
from longarena.models.backbone import LanguageModel, ModelConfig, SequenceClassifier
from longarena.train import TrainConfig, evaluate, model_for_task, train
from longarena.train.objective import _lr_at

SMALL = ModelConfig(d_model=32, n_layers=1, mixer={"attention": {"n_heads": 2}})


def test_model_for_task_picks_the_head_and_sizes():
    lm_task = tasks.get("associative_recall", vocab_size=20, n_train=8)
    lm = model_for_task(lm_task, SMALL)
    assert isinstance(lm, LanguageModel) and lm.config.vocab_size == 20
    cls_task = tasks.get("majority", num_classes=5, n_train=8)
    bidir = SMALL.replace(mixer={"attention": {"n_heads": 2, "causal": False}})
    clf = model_for_task(cls_task, bidir)
    assert isinstance(clf, SequenceClassifier) and clf.config.num_classes == 5


def test_learning_rate_warms_up_then_decays_to_zero():
    config = TrainConfig(steps=100, warmup=10, lr=1.0)
    lrs = [_lr_at(s, config) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert _lr_at(100, config) == pytest.approx(0.0, abs=1e-12)


def test_training_lowers_the_loss_and_evaluation_counts_scored_tokens():
    task = tasks.get("associative_recall", vocab_size=16, num_pairs=2, num_queries=2, n_train=256, n_validation=64)
    torch.manual_seed(0)
    model = model_for_task(task, SMALL)
    before = evaluate(model, task)
    result = train(model, task, TrainConfig(steps=60, batch_size=32, lr=3e-3, warmup=5))
    assert result.final["loss"] < before["loss"] - 0.3
    assert len(result.history) == 60 and result.parameters > 0
    # accuracy is over the 2 scored positions per sequence, so it is a multiple of 1/128
    assert (result.final["accuracy"] * 64 * 2) == pytest.approx(round(result.final["accuracy"] * 128))


def test_bad_train_config_is_refused():
    with pytest.raises(ConfigError, match="batch_size > 0"):
        TrainConfig(batch_size=0)
