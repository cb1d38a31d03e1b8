"""Small synthetic tasks generated in-process: associative recall and majority.

Associative recall (the MQAR setting of Zoology, Arora et al. 2023): the sequence lists
key-value pairs, then asks for some keys again; the model must emit each key's value. It
separates models that can look things up in their context from those that cannot, and
its difficulty grows with the number of pairs a fixed-size state must hold.
"""

from __future__ import annotations

import dataclasses

import torch

from longarena.config import ConfigError
from longarena.tasks import register
from longarena.tasks.base import IGNORE, Task, TaskConfig


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
        examples = []
        for _ in range(n):
            keys = torch.randperm(half, generator=generator)[: c.num_pairs] + 1  # ids 1..half
            values = torch.randint(half + 1, c.vocab_size, (c.num_pairs,), generator=generator)
            which = torch.randint(0, c.num_pairs, (c.num_queries,), generator=generator)
            context = torch.stack([keys, values], dim=1).flatten()
            queries = torch.stack([keys[which], values[which]], dim=1).flatten()
            tokens = torch.cat([context, queries])
            labels = torch.full_like(tokens, IGNORE)
            # score the prediction of each queried value, made at its key's position
            q_start = 2 * c.num_pairs
            labels[q_start : -1 : 2] = tokens[q_start + 1 :: 2]
            examples.append({"input_ids": tokens[:-1], "labels": labels[:-1]})
        return examples


@dataclasses.dataclass
class MajorityConfig(TaskConfig):
    num_classes: int = 4
    length: int = 32

    def validate(self) -> None:
        super().validate()
        if self.num_classes < 2 or self.length < 1:
            raise ConfigError(f"num_classes must be >= 2 and length >= 1, got {self.num_classes}, {self.length}")


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
