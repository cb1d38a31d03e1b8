"""Synthetic tasks generated in-process: recall, copying, induction, majority.

Every LM task here follows one layout: a token sequence ``s`` of length T + 1 is built,
``input_ids = s[:-1]`` and ``labels[t] = s[t + 1]`` where position t is scored, ``IGNORE``
elsewhere (teacher forcing on the answer tokens). Token 0 is padding in every task.

- associative_recall: key-value pairs, then queries of some keys (a compact MQAR).
- mqar: multi-query associative recall in the Zoology layout (Arora et al. 2023): the
  pairs open the sequence, the queries are spread over the rest at power-law distributed
  gaps, and every other position holds random tokens.
- selective_copying: data tokens scattered among noise tokens; after a separator the
  model writes them in order (Gu & Dao 2023, Mamba, section 3.1).
- induction_heads: a trigger token followed by a target appears once in random tokens;
  the sequence ends with the trigger and the model must recall the target. Validation and
  test splits may be longer than training (length extrapolation, as in the Mamba paper).
- copying: tokens, an optional delay of blanks, a separator, then the same tokens.
- majority: classify a sequence by its most frequent symbol.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from longarena.config import ConfigError
from longarena.constants import IGNORE
from longarena.tasks import register
from longarena.tasks.base import Task, TaskConfig


def _lm_examples(seqs: Tensor, scored: Tensor) -> list[dict[str, Tensor]]:
    """Turn sequences (N, T + 1) and a mask of scored positions (N, T) into LM examples."""
    labels = torch.where(scored, seqs[:, 1:], torch.full_like(seqs[:, 1:], IGNORE))
    inputs = seqs[:, :-1]
    return [{"input_ids": inputs[i].clone(), "labels": labels[i].clone()} for i in range(seqs.shape[0])]


def _distinct_rows(n: int, population: int, k: int, generator: torch.Generator) -> Tensor:
    """(n, k) rows of distinct values in [0, population), each row a uniformly random draw in random order."""
    return torch.rand(n, population, generator=generator).topk(k, dim=1).indices


@dataclasses.dataclass
class AssociativeRecallConfig(TaskConfig):
    vocab_size: int = 32
    num_pairs: int = 8
    num_queries: int = 8

    def validate(self) -> None:
        super().validate()
        half = (self.vocab_size - 1) // 2
        if self.num_pairs < 1 or self.num_pairs > half:
            raise ConfigError(
                f"num_pairs must be in 1..{half} (distinct keys from half of a vocabulary of "
                f"{self.vocab_size}), got {self.num_pairs}"
            )
        if self.num_queries < 1:
            raise ConfigError(f"num_queries must be >= 1, got {self.num_queries}")


@register("associative_recall")
class AssociativeRecall(Task):
    """Key-value pairs, then queries: predict each queried key's value (multi-query recall)."""

    config_class = AssociativeRecallConfig
    kind = "lm"

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def seq_len(self) -> int:
        return 2 * (self.config.num_pairs + self.config.num_queries) - 1

    def generate(self, split, n, generator):
        c = self.config
        half = (c.vocab_size - 1) // 2
        keys = _distinct_rows(n, half, c.num_pairs, generator) + 1  # (N, P) ids 1..half
        values = torch.randint(half + 1, c.vocab_size, (n, c.num_pairs), generator=generator)
        which = torch.randint(0, c.num_pairs, (n, c.num_queries), generator=generator)
        context = torch.stack([keys, values], dim=2).flatten(1)  # (N, 2P)
        queries = torch.stack([keys.gather(1, which), values.gather(1, which)], dim=2).flatten(1)  # (N, 2Q)
        seqs = torch.cat([context, queries], dim=1)
        scored = torch.zeros(n, seqs.shape[1] - 1, dtype=torch.bool)
        # each queried value is predicted at its key's position
        scored[:, 2 * c.num_pairs :: 2] = True
        return _lm_examples(seqs, scored)


@dataclasses.dataclass
class MQARConfig(TaskConfig):
    vocab_size: int = 8192
    num_pairs: int = 16
    length: int = 256
    power_a: float = 0.01
    random_non_queries: bool = True

    def validate(self) -> None:
        super().validate()
        max_keys = self.vocab_size // 2 - 1
        if self.vocab_size < 6:
            raise ConfigError(f"vocab_size must be >= 6, got {self.vocab_size}")
        if not 1 <= self.num_pairs <= max_keys:
            raise ConfigError(
                f"num_pairs must be in 1..{max_keys} (distinct keys from the lower half of a "
                f"vocabulary of {self.vocab_size}), got {self.num_pairs}"
            )
        if self.length < 4 * self.num_pairs:
            raise ConfigError(
                f"length must be >= 4 * num_pairs = {4 * self.num_pairs} (the pairs, then one query "
                f"slot of 2 tokens per pair), got {self.length}"
            )
        if not 0 < self.power_a <= 1:
            raise ConfigError(f"power_a must be in (0, 1], got {self.power_a}")


@register("mqar")
class MQAR(Task):
    """Multi-query associative recall, Zoology layout: pairs first, queries spread at power-law gaps."""

    config_class = MQARConfig
    kind = "lm"

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def seq_len(self) -> int:
        return self.config.length

    def generate(self, split, n, generator):
        c = self.config
        P, T, half = c.num_pairs, c.length, c.vocab_size // 2
        keys = _distinct_rows(n, half - 1, P, generator) + 1  # (N, P) in [1, half)
        values = torch.randint(half, c.vocab_size, (n, P), generator=generator)  # (N, P)
        slots = (T - 2 * P) // 2  # query slots of 2 tokens after the context
        # p(gap = k) ∝ k^(a-1): small a puts most queries soon after the context, with a long tail
        weights = torch.arange(1, slots + 1, dtype=torch.float64) ** (c.power_a - 1)
        gaps = torch.multinomial(weights.expand(n, -1), P, replacement=False, generator=generator)  # (N, P)
        order = _distinct_rows(n, P, P, generator)  # which pair each query asks for
        if c.random_non_queries:
            seqs = torch.randint(1, c.vocab_size, (n, T + 1), generator=generator)
        else:
            seqs = torch.zeros(n, T + 1, dtype=torch.int64)
        seqs[:, 0 : 2 * P : 2] = keys
        seqs[:, 1 : 2 * P : 2] = values
        key_pos = 2 * P + 2 * gaps  # (N, P)
        seqs.scatter_(1, key_pos, keys.gather(1, order))
        seqs.scatter_(1, key_pos + 1, values.gather(1, order))
        scored = torch.zeros(n, T, dtype=torch.bool)
        scored.scatter_(1, key_pos, True)
        return _lm_examples(seqs, scored)


@dataclasses.dataclass
class SelectiveCopyingConfig(TaskConfig):
    vocab_size: int = 16
    num_tokens: int = 16
    length: int = 256

    def validate(self) -> None:
        super().validate()
        if self.vocab_size < 2:
            raise ConfigError(f"vocab_size (data tokens) must be >= 2, got {self.vocab_size}")
        if self.num_tokens < 1 or self.length < self.num_tokens:
            raise ConfigError(
                f"need 1 <= num_tokens <= length, got num_tokens={self.num_tokens}, length={self.length}"
            )


@register("selective_copying")
class SelectiveCopying(Task):
    """Data tokens scattered among noise; after a separator, write the data tokens in order."""

    config_class = SelectiveCopyingConfig
    kind = "lm"
    NOISE, SEP, FIRST = 1, 2, 3

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size + self.FIRST

    @property
    def seq_len(self) -> int:
        return self.config.length + self.config.num_tokens

    def generate(self, split, n, generator):
        c = self.config
        L, K = c.length, c.num_tokens
        data = torch.randint(self.FIRST, self.FIRST + c.vocab_size, (n, K), generator=generator)
        where = _distinct_rows(n, L, K, generator).sort(dim=1).values  # (N, K) increasing positions
        context = torch.full((n, L), self.NOISE, dtype=torch.int64).scatter_(1, where, data)
        sep = torch.full((n, 1), self.SEP, dtype=torch.int64)
        seqs = torch.cat([context, sep, data], dim=1)  # (N, L + 1 + K)
        scored = torch.zeros(n, L + K, dtype=torch.bool)
        scored[:, L:] = True  # from the separator on, predict the next data token
        return _lm_examples(seqs, scored)


@dataclasses.dataclass
class InductionHeadsConfig(TaskConfig):
    vocab_size: int = 16
    length: int = 256
    validation_length: int | None = None
    test_length: int | None = None

    def validate(self) -> None:
        super().validate()
        if self.vocab_size < 2:
            raise ConfigError(f"vocab_size (data tokens) must be >= 2, got {self.vocab_size}")
        for name in ("length", "validation_length", "test_length"):
            value = getattr(self, name)
            if value is not None and value < 4:
                raise ConfigError(f"{name} must be >= 4 (trigger, target, filler, trigger), got {value}")


@register("induction_heads")
class InductionHeads(Task):
    """Recall the token that followed a trigger token; test splits may be longer than training."""

    config_class = InductionHeadsConfig
    kind = "lm"
    TRIGGER, FIRST = 1, 2

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size + self.FIRST

    def length_of(self, split: str) -> int:
        c = self.config
        value = {"validation": c.validation_length, "test": c.test_length}.get(split)
        return c.length if value is None else value

    @property
    def seq_len(self) -> int:
        return max(self.length_of(s) for s in ("train", "validation", "test"))

    def generate(self, split, n, generator):
        c = self.config
        T = self.length_of(split)
        seqs = torch.randint(self.FIRST, self.FIRST + c.vocab_size, (n, T + 1), generator=generator)
        # the trigger sits in [0, T - 3] so its target (at p + 1 <= T - 2) precedes the final trigger
        p = torch.randint(0, T - 2, (n, 1), generator=generator)
        seqs.scatter_(1, p, self.TRIGGER)
        seqs[:, T - 1] = self.TRIGGER
        seqs[:, T] = seqs.gather(1, p + 1).squeeze(1)
        scored = torch.zeros(n, T, dtype=torch.bool)
        scored[:, T - 1] = True
        return _lm_examples(seqs, scored)


@dataclasses.dataclass
class CopyingConfig(TaskConfig):
    vocab_size: int = 10
    num_tokens: int = 16
    delay: int = 0

    def validate(self) -> None:
        super().validate()
        if self.vocab_size < 2 or self.num_tokens < 1 or self.delay < 0:
            raise ConfigError(
                f"need vocab_size >= 2, num_tokens >= 1, delay >= 0; got {self.vocab_size}, "
                f"{self.num_tokens}, {self.delay}"
            )


@register("copying")
class Copying(Task):
    """Tokens, ``delay`` blanks, a separator, then the same tokens again."""

    config_class = CopyingConfig
    kind = "lm"
    BLANK, SEP, FIRST = 1, 2, 3

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size + self.FIRST

    @property
    def seq_len(self) -> int:
        return 2 * self.config.num_tokens + self.config.delay

    def generate(self, split, n, generator):
        c = self.config
        K, D = c.num_tokens, c.delay
        data = torch.randint(self.FIRST, self.FIRST + c.vocab_size, (n, K), generator=generator)
        blanks = torch.full((n, D), self.BLANK, dtype=torch.int64)
        sep = torch.full((n, 1), self.SEP, dtype=torch.int64)
        seqs = torch.cat([data, blanks, sep, data], dim=1)  # (N, 2K + D + 1)
        scored = torch.zeros(n, 2 * K + D, dtype=torch.bool)
        scored[:, K + D :] = True
        return _lm_examples(seqs, scored)


@dataclasses.dataclass
class MajorityConfig(TaskConfig):
    num_classes: int = 4
    length: int = 32

    def validate(self) -> None:
        super().validate()
        if self.num_classes < 2 or self.length < 1:
            raise ConfigError(
                f"num_classes must be >= 2 and length >= 1, got {self.num_classes}, {self.length}"
            )


@register("majority")
class Majority(Task):
    """Classify a sequence by its most frequent symbol (ties go to the smallest)."""

    config_class = MajorityConfig
    kind = "classification"

    @property
    def vocab_size(self) -> int:
        return self.config.num_classes + 1  # 0 is padding

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def seq_len(self) -> int:
        return self.config.length

    def generate(self, split, n, generator):
        c = self.config
        examples = []
        for _ in range(n):
            # skewed symbol probabilities make a clear majority common but not trivial
            probs = torch.rand(c.num_classes, generator=generator) ** 3
            tokens = torch.multinomial(probs / probs.sum(), c.length, replacement=True, generator=generator)
            counts = torch.bincount(tokens, minlength=c.num_classes)
            examples.append({"input_ids": tokens + 1, "label": counts.argmax()})
        return examples
