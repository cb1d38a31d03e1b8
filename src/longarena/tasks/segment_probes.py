"""A seeded probe for segment memory: remember a fact across N segments.

Each sequence is N segments of S tokens. One *fact* token (one of ``n_facts``) sits at a
random position of the first segment; every other token is filler (``n_filler`` ids); the
last token is the query, and its label (the next token) is the fact. Only that label is
scored, so chance accuracy is ``1 / n_facts``, and a model that reads one segment at a time
can beat chance only by carrying the fact through N - 1 segment boundaries.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from longarena.config import Config, ConfigError
from longarena.constants import IGNORE


@dataclasses.dataclass
class FactRecallConfig(Config):
    n_segments: int = 4
    segment_len: int = 8
    n_facts: int = 8
    n_filler: int = 16

    def validate(self) -> None:
        for name in ("n_segments", "segment_len", "n_facts", "n_filler"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.n_segments * self.segment_len < 2:
            raise ConfigError("a fact-recall sequence needs at least 2 tokens (the fact and the query)")

    @property
    def vocab_size(self) -> int:
        """Facts 0..F-1, filler F..F+Fi-1, the query token F+Fi."""
        return self.n_facts + self.n_filler + 1


def fact_recall(config: FactRecallConfig, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(ids, labels), each (B, N * S); labels are IGNORE except the last position (the fact)."""
    c = config
    length = c.n_segments * c.segment_len
    ids = torch.randint(c.n_facts, c.n_facts + c.n_filler, (batch_size, length), generator=generator)
    facts = torch.randint(0, c.n_facts, (batch_size,), generator=generator)
    where = torch.randint(0, min(c.segment_len, length - 1), (batch_size,), generator=generator)
    ids[torch.arange(batch_size), where] = facts
    ids[:, -1] = c.n_facts + c.n_filler
    labels = torch.full_like(ids, IGNORE)
    labels[:, -1] = facts
    return ids, labels
