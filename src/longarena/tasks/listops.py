"""LRA ListOps (Nangia & Bowman 2018; Tay et al. 2021): evaluate nested list operations.

An expression is a tree: a leaf is a digit 0-9; an inner node is an operator applied to
2..max_args sub-expressions, written ``[OP a b c ]``. Operators: MIN, MAX, MED (median of
the arguments, rounded down: the integer part of the usual median) and SM (sum modulo
10). The label is the value of the whole expression, a digit: 10 classes.

The generator follows the benchmark's: at depth < max_depth a node is an operator with
probability ``operator_p`` (0.25), else a leaf; operators and arguments are uniform; a
tree is kept when ``min_length < length < max_length`` (500 and 2000 in LRA), where the
length counts digits, operators and closing brackets. Unlike the original it is seeded,
so every split is reproducible. Trees that grow past ``max_length`` are abandoned as soon
as they do, which keeps the rejection sampling cheap.

Tokens (no parentheses: the official TSVs' ``(`` ``)`` only restate the bracket
structure and are dropped when reading them): 0 pad, 1..10 the digits 0..9, 11 ``[MIN``,
12 ``[MAX``, 13 ``[MED``, 14 ``[SM``, 15 ``]``.

``evaluate(tokens)`` is an independent stack evaluator (it shares no code with the
generator) used by the tests and by ``check`` to verify every generated answer.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from longarena.config import ConfigError
from longarena.tasks import register
from longarena.tasks.base import Task, TaskConfig

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VOCAB = ["<pad>"] + [str(d) for d in range(10)] + list(OPERATORS) + [END]
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
DIGIT0 = TOKEN_ID["0"]
OP0 = TOKEN_ID[OPERATORS[0]]
END_ID = TOKEN_ID[END]


class _TooLong(Exception):
    pass


def _median_floor(values: list[int]) -> int:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2


_APPLY = (min, max, _median_floor, lambda v: sum(v) % 10)


def generate_expression(
    rng: random.Random,
    *,
    max_depth: int = 10,
    max_args: int = 10,
    operator_p: float = 0.25,
    max_length: int = 2000,
) -> tuple[list[int], int] | None:
    """One random tree as (token ids, value), or None when it reaches ``max_length`` tokens."""
    tokens: list[int] = []

    def node(depth: int) -> int:
        if depth < max_depth and rng.random() < operator_p:
            op = rng.randrange(len(OPERATORS))
            tokens.append(OP0 + op)
            args = [node(depth + 1) for _ in range(rng.randint(2, max_args))]
            tokens.append(END_ID)
            if len(tokens) >= max_length:
                raise _TooLong
            return _APPLY[op](args)
        digit = rng.randrange(10)
        tokens.append(DIGIT0 + digit)
        if len(tokens) >= max_length:
            raise _TooLong
        return digit

    try:
        value = node(1)
    except _TooLong:
        return None
    return tokens, value


def evaluate(tokens: list[int] | torch.Tensor) -> int:
    """Value of a tokenised expression, computed with an explicit stack (padding ignored)."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.tolist()
    ops = {
        "[MIN": min,
        "[MAX": max,
        "[MED": lambda v: int(statistics.median(v)),
        "[SM": lambda v: sum(v) % 10,
    }
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    for t in tokens:
        if t == 0:
            continue
        word = VOCAB[t]
        if word in ops:
            stack.append((word, []))
            continue
        if word == END:
            if not stack:
                raise ValueError("unbalanced expression: ']' without an operator")
            op, args = stack.pop()
            if len(args) < 2:
                raise ValueError(f"operator {op} closed with {len(args)} argument(s); expected >= 2")
            value = ops[op](args)
        else:
            value = int(word)
        if stack:
            stack[-1][1].append(value)
        elif result is None:
            result = value
        else:
            raise ValueError("expression continues after its end")
    if stack or result is None:
        raise ValueError("incomplete expression")
    return result


def to_string(tokens: list[int] | torch.Tensor) -> str:
    """Space-separated text of a tokenised expression (no parentheses)."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.tolist()
    return " ".join(VOCAB[t] for t in tokens if t != 0)


def tokenize(text: str) -> list[int]:
    """Token ids of an expression in the official TSV form (parentheses are dropped)."""
    out = []
    for word in text.split():
        if word in ("(", ")"):
            continue
        if word not in TOKEN_ID or word == "<pad>":
            raise ValueError(f"unknown ListOps token {word!r}; expected digits, {OPERATORS}, ']', '(' or ')'")
        out.append(TOKEN_ID[word])
    return out


@dataclasses.dataclass
class ListOpsConfig(TaskConfig):
    n_train: int = 96_000
    n_validation: int = 2_000
    n_test: int = 2_000
    max_depth: int = 10
    max_args: int = 10
    operator_p: float = 0.25
    min_length: int = 500
    max_length: int = 2000
    data_dir: str | None = None

    def validate(self) -> None:
        super().validate()
        if not 2 <= self.max_depth <= 20:
            raise ConfigError(f"max_depth must be in 2..20, got {self.max_depth}")
        if self.max_args < 2:
            raise ConfigError(f"max_args must be >= 2, got {self.max_args}")
        if not 0 < self.operator_p < 1:
            raise ConfigError(f"operator_p must be in (0, 1), got {self.operator_p}")
        if self.min_length < 0 or self.max_length <= self.min_length + 4:
            raise ConfigError(
                f"need 0 <= min_length and max_length >= min_length + 5 (a tree of min_length < "
                f"length < max_length must exist), got min_length={self.min_length}, "
                f"max_length={self.max_length}"
            )
        # the longest tree the depth and branching allow: every node an operator down to max_depth
        longest = 1
        for _ in range(self.max_depth - 1):
            longest = 2 + self.max_args * longest
        if longest <= self.min_length:
            raise ConfigError(
                f"min_length={self.min_length} is unreachable: trees with max_depth={self.max_depth} and "
                f"max_args={self.max_args} have at most {longest} tokens"
            )


OFFICIAL_FILES = {"train": "basic_train.tsv", "validation": "basic_val.tsv", "test": "basic_test.tsv"}


@register("listops")
class ListOps(Task):
    """LRA ListOps: the value (0-9) of a nested MIN/MAX/MED/SM expression of 500-2000 tokens."""

    config_class = ListOpsConfig
    kind = "classification"
    shard_size = 500
    parallel = True
    cache_by_default = True

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def seq_len(self) -> int:
        return self.config.max_length - 1

    def generate(self, split, n, generator):
        c = self.config
        if c.data_dir is not None:
            return self._read_official(split, n)
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        examples = []
        while len(examples) < n:
            tree = generate_expression(
                rng,
                max_depth=c.max_depth,
                max_args=c.max_args,
                operator_p=c.operator_p,
                max_length=c.max_length,
            )
            if tree is None or len(tree[0]) <= c.min_length:
                continue
            tokens, value = tree
            examples.append(
                {"input_ids": torch.tensor(tokens, dtype=torch.int64), "label": torch.tensor(value)}
            )
        return examples

    def split_size(self, name: str) -> int:
        if self.config.data_dir is not None:
            return len(self._official_rows(name))
        return super().split_size(name)

    def cache_path(self, name: str):
        # files given by the user are read, not cached: a key could not see them change
        return None if self.config.data_dir is not None else super().cache_path(name)

    def _official_rows(self, split: str) -> list[tuple[str, str]]:
        path = Path(self.config.data_dir).expanduser() / OFFICIAL_FILES[split]
        if not path.is_file():
            raise FileNotFoundError(
                f"ListOps: missing {path}. Expected the LRA release files "
                f"{', '.join(OFFICIAL_FILES.values())} (tab-separated, header 'Source\\tTarget') in "
                f"{Path(self.config.data_dir).expanduser()} (e.g. lra_release/listops-1000/)."
            )
        rows = []
        with path.open() as f:
            header = f.readline().rstrip("\n").split("\t")
            if header[:2] != ["Source", "Target"]:
                raise ValueError(f"{path}: expected a header 'Source\\tTarget', got {header}")
            for line in f:
                if line.strip():
                    source, target = line.rstrip("\n").split("\t")[:2]
                    rows.append((source, target))
        return rows

    def _read_official(self, split: str, n: int) -> list[dict[str, torch.Tensor]]:
        rows = self._official_rows(split)
        return [
            {"input_ids": torch.tensor(tokenize(s), dtype=torch.int64), "label": torch.tensor(int(t))}
            for s, t in rows[:n]
        ]

    def _build(self, name, progress, workers):
        if self.config.data_dir is not None:
            # a file split is read whole, in order; sharding would only reshuffle the reading
            from longarena.tasks.base import ExampleDataset

            return ExampleDataset(self._read_official(name, self.split_size(name)))
        return super()._build(name, progress, workers)


def check(dataset) -> int:
    """Verify every label with ``evaluate``; returns the number checked, raises on a mismatch."""
    for i, ex in enumerate(dataset):
        got = evaluate(ex["input_ids"])
        if got != int(ex["label"]):
            raise AssertionError(
                f"example {i}: label {int(ex['label'])} but the expression evaluates to {got}"
            )
    return len(dataset)


def stats(dataset) -> dict[str, Any]:
    """Lengths, operator frequencies and label counts of a ListOps split."""
    lengths = (
        dataset.lengths().tolist()
        if hasattr(dataset, "lengths")
        else [len(ex["input_ids"]) for ex in dataset]
    )
    ops: Counter[str] = Counter()
    labels: Counter[int] = Counter()
    depths = []
    for ex in dataset:
        ids = ex["input_ids"]
        counts = torch.bincount(ids, minlength=len(VOCAB))
        for k, op in enumerate(OPERATORS):
            ops[op] += int(counts[OP0 + k])
        labels[int(ex["label"])] += 1
        is_op = ((ids >= OP0) & (ids < END_ID)).to(torch.int64)
        depths.append(int((is_op - (ids == END_ID).to(torch.int64)).cumsum(0).max()))
    total_ops = sum(ops.values()) or 1
    return {
        "n": len(lengths),
        "length_min": min(lengths, default=0),
        "length_mean": sum(lengths) / max(len(lengths), 1),
        "length_max": max(lengths, default=0),
        "depth_max": max(depths, default=0),
        "operator_frequency": {op: ops[op] / total_ops for op in OPERATORS},
        "label_counts": {d: labels[d] for d in range(10)},
    }
