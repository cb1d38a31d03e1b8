"""Synthetic tasks: every scored label is re-derived from the inputs by an independent rule."""

from __future__ import annotations

import pytest
import torch

from longarena import tasks
from longarena.config import ConfigError
from longarena.tasks.base import IGNORE


def _scored(ex):
    pos = (ex["labels"] != IGNORE).nonzero().flatten().tolist()
    return pos, [int(ex["labels"][p]) for p in pos]


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_mqar_labels_are_the_values_of_the_queried_keys(random_non_queries):
    c = dict(vocab_size=64, num_pairs=6, length=64, n_test=50, random_non_queries=random_non_queries)
    task = tasks.get("mqar", **c)
    assert task.seq_len == 64 and task.vocab_size == 64
    for ex in task.split("test"):
        ids = ex["input_ids"].tolist()
        assert len(ids) == 64 and max(ids) < 64 and min(ids) >= 0
        table = dict(zip(ids[0:12:2], ids[1:12:2]))
        assert len(table) == 6 and all(k < 32 <= v for k, v in table.items())
        pos, labels = _scored(ex)
        assert len(pos) == 6 and min(pos) >= 12
        assert sorted(ids[p] for p in pos) == sorted(table)  # every key asked exactly once
        assert labels == [table[ids[p]] for p in pos]
        for p in pos:  # the answer follows its query in the input too (teacher forcing)
            if p + 1 < 64:
                assert ids[p + 1] == table[ids[p]]


def test_mqar_queries_concentrate_early_with_small_power():
    task = tasks.get("mqar", vocab_size=256, num_pairs=4, length=512, n_test=200, power_a=0.01)
    gaps = torch.tensor([p for ex in task.split("test") for p in _scored(ex)[0]]) - 8
    slots = (512 - 8) // 2
    # p(k) ∝ k^-0.99 puts far more mass in the first tenth of the slots than a uniform draw (10%)
    assert (gaps < 2 * slots // 10).float().mean() > 0.4


@pytest.mark.parametrize(
    "config, match",
    [
        (dict(vocab_size=16, num_pairs=8), "num_pairs must be in 1..7"),
        (dict(vocab_size=64, num_pairs=8, length=31), "length must be >= 4 \\* num_pairs = 32"),
        (dict(power_a=0.0), "power_a"),
    ],
)
def test_mqar_impossible_configs(config, match):
    with pytest.raises(ConfigError, match=match):
        tasks.get("mqar", **config)


def test_associative_recall_keeps_its_contract():
    task = tasks.get("associative_recall", vocab_size=32, num_pairs=5, num_queries=7, n_test=30)
    assert task.seq_len == 2 * (5 + 7) - 1
    for ex in task.split("test"):
        ids = ex["input_ids"].tolist() + [None]
        table = dict(zip(ids[0:10:2], ids[1:10:2]))
        pos, labels = _scored(ex)
        assert len(pos) == 7
        assert labels == [table[ids[p]] for p in pos]
    with pytest.raises(ConfigError, match="num_pairs must be in 1..15"):
        tasks.get("associative_recall", vocab_size=32, num_pairs=16)


def test_selective_copying_outputs_the_data_tokens_in_order():
    task = tasks.get("selective_copying", vocab_size=8, num_tokens=5, length=30, n_test=40)
    assert task.seq_len == 35
    for ex in task.split("test"):
        ids = ex["input_ids"].tolist()
        context, sep = ids[:30], ids[30]
        data = [t for t in context if t != task.NOISE]
        assert sep == task.SEP and len(data) == 5
        pos, labels = _scored(ex)
        assert pos == list(range(30, 35)) and labels == data
        assert ids[31:] == data[:-1]
    with pytest.raises(ConfigError, match="num_tokens <= length"):
        tasks.get("selective_copying", num_tokens=10, length=5)


def test_induction_heads_target_follows_the_trigger_and_tests_extrapolate():
    task = tasks.get("induction_heads", vocab_size=6, length=16, test_length=64, n_train=30, n_test=30)
    assert task.seq_len == 64
    for split, T in (("train", 16), ("test", 64)):
        for ex in task.split(split):
            ids = ex["input_ids"].tolist()
            assert len(ids) == T and ids[-1] == task.TRIGGER
            first = ids.index(task.TRIGGER)
            assert ids.count(task.TRIGGER) == 2 and first < T - 2
            assert _scored(ex) == ([T - 1], [ids[first + 1]])
    with pytest.raises(ConfigError, match="test_length must be >= 4"):
        tasks.get("induction_heads", test_length=3)


def test_copying_repeats_after_the_delay():
    task = tasks.get("copying", vocab_size=5, num_tokens=4, delay=3, n_test=20)
    for ex in task.split("test"):
        ids = ex["input_ids"].tolist()
        assert ids[4:7] == [task.BLANK] * 3 and ids[7] == task.SEP
        pos, labels = _scored(ex)
        assert pos == list(range(7, 11)) and labels == ids[:4]


def test_majority_label_is_the_most_frequent_symbol():
    task = tasks.get("majority", num_classes=3, length=9, n_test=40)
    for ex in task.split("test"):
        counts = [ex["input_ids"].tolist().count(s + 1) for s in range(3)]
        assert int(ex["label"]) == counts.index(max(counts))
