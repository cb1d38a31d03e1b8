"""ListOps: every generated answer agrees with the independent evaluator; lengths, depth
and operators follow the config; the official TSV layout reads back; bad configs explain."""

from __future__ import annotations

import random
import statistics

import pytest
import torch

from longarena import tasks
from longarena.config import ConfigError
from longarena.tasks import listops
from longarena.tasks.listops import TOKEN_ID, evaluate, tokenize

SMALL = dict(min_length=40, max_length=200, n_train=60, n_validation=10, n_test=10)


def _tree_value(text: str) -> int:
    """A third way to evaluate: recursive descent over the text form (with parentheses)."""
    words = [w for w in text.replace("(", " ").replace(")", " ").split()]
    pos = 0

    def parse() -> int:
        nonlocal pos
        w = words[pos]
        pos += 1
        if w.isdigit():
            return int(w)
        args = []
        while words[pos] != "]":
            args.append(parse())
        pos += 1
        if w == "[MIN":
            return min(args)
        if w == "[MAX":
            return max(args)
        if w == "[SM":
            return sum(args) % 10
        return int(statistics.median(args))

    return parse()


def test_evaluator_on_hand_written_expressions():
    cases = {
        "[MAX 2 9 ]": 9,
        "[MIN 4 [MAX 7 1 ] 3 ]": 3,
        "[MED 1 2 3 9 ]": 2,  # (2 + 3) / 2 rounded down
        "[MED 5 1 8 ]": 5,
        "[SM 7 8 9 ]": 4,
        "( ( ( [SM 2 ) 6 ) 5 ) ] )": 3,  # the official form, parentheses dropped
        "7": 7,
    }
    for text, value in cases.items():
        assert evaluate(tokenize(text)) == value == _tree_value(text)
    for bad in ("[MAX 2 ]", "[MAX 2 3", "] 2", "2 3"):
        with pytest.raises(ValueError):
            evaluate(tokenize(bad))
    with pytest.raises(ValueError, match="unknown ListOps token"):
        tokenize("[FIRST 1 2 ]")


def test_every_generated_answer_checks_out():
    task = tasks.get("listops", **SMALL)
    task.use_cache = False
    for split in ("train", "validation", "test"):
        ds = task.split(split)
        assert listops.check(ds) == len(ds) == SMALL[f"n_{split}"]
        for ex in ds:
            assert _tree_value(listops.to_string(ex["input_ids"])) == int(ex["label"])


def test_benchmark_defaults_give_500_to_2000_tokens():
    task = tasks.get("listops", n_test=6)
    task.use_cache = False
    assert (task.config.min_length, task.config.max_length, task.config.n_train) == (500, 2000, 96_000)
    ds = task.split("test")
    assert all(500 < n < 2000 for n in ds.lengths().tolist()) and listops.check(ds) == 6


def test_lengths_depth_and_operators_follow_the_config():
    task = tasks.get("listops", **SMALL, max_depth=6)
    task.use_cache = False
    s = listops.stats(task.split("train"))
    assert 40 < s["length_min"] and s["length_max"] < 200
    assert s["depth_max"] <= 5  # operators nest at depths 1..max_depth-1
    assert abs(sum(s["operator_frequency"].values()) - 1) < 1e-9
    assert all(0.1 < f < 0.4 for f in s["operator_frequency"].values())
    assert sum(s["label_counts"].values()) == 60


def test_generator_matches_the_benchmark_distribution_before_filtering():
    """Below max_depth a node is an operator with probability 0.25; operators take 2..max_args
    arguments; nothing is deeper than max_depth."""
    rng = random.Random(0)
    ops_above_cap = nodes_above_cap = 0
    arities = []
    for _ in range(300):
        tokens, value = listops.generate_expression(rng, max_length=10_000)
        assert evaluate(tokens) == value
        stack: list[int] = []
        for t in tokens:
            if t == listops.END_ID:
                arities.append(stack.pop())
                continue
            depth = len(stack) + 1
            assert depth <= 10
            if stack:
                stack[-1] += 1
            is_op = listops.OP0 <= t < listops.END_ID
            if depth < 10:
                nodes_above_cap += 1
                ops_above_cap += is_op
            if is_op:
                stack.append(0)
    assert min(arities) == 2 and max(arities) == 10
    assert abs(ops_above_cap / nodes_above_cap - 0.25) < 0.02


def test_official_tsv_files_are_read(tmp_path):
    rows = [("( ( [MAX 2 ) 9 ) ]", "9"), ("[SM 3 [MIN 4 5 ] ]", "7")]
    for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
        (tmp_path / name).write_text("Source\tTarget\n" + "".join(f"{s}\t{t}\n" for s, t in rows))
    task = tasks.get("listops", data_dir=str(tmp_path))
    ds = task.split("validation", progress=False)
    assert len(ds) == 2 and listops.check(ds) == 2
    assert ds[0]["input_ids"].tolist() == [TOKEN_ID["[MAX"], TOKEN_ID["2"], TOKEN_ID["9"], TOKEN_ID["]"]]


def test_missing_official_files_are_named(tmp_path):
    task = tasks.get("listops", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="basic_train.tsv, basic_val.tsv, basic_test.tsv"):
        task.split("train")


@pytest.mark.parametrize(
    "config, match",
    [
        (dict(min_length=600, max_length=500), "max_length >= min_length \\+ 5"),
        (dict(max_depth=2, max_args=3, min_length=10, max_length=40), "min_length=10 is unreachable"),
        (dict(max_args=1), "max_args must be >= 2"),
        (dict(operator_p=1.5), "operator_p"),
    ],
)
def test_impossible_configs(config, match):
    with pytest.raises(ConfigError, match=match):
        tasks.get("listops", **config)


def test_tokens_fit_the_vocabulary():
    task = tasks.get("listops", **SMALL)
    task.use_cache = False
    ids = torch.cat([ex["input_ids"] for ex in task.split("test")])
    assert ids.min() >= 1 and ids.max() < task.vocab_size == 16 and task.num_classes == 10
