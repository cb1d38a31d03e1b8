"""The task interface: seeded splits of examples and a collate that pads them.

An example is a dict of tensors. Language-modelling tasks (``kind = "lm"``) give
``input_ids: (T,)`` and ``labels: (T,)`` (the next token to predict at each position, or
``IGNORE`` where nothing is scored). Classification tasks (``kind = "classification"``)
give ``input_ids: (T,)`` and a scalar ``label``. Retrieval tasks (``kind = "retrieval"``)
give two sequences ``input_ids`` / ``input_ids_2`` and a scalar ``label``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from longarena.config import Config, ConfigError

IGNORE = -100
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class TaskConfig(Config):
    seed: int = 0
    n_train: int = 2048
    n_validation: int = 256
    n_test: int = 256

    def validate(self) -> None:
        for name in ("n_train", "n_validation", "n_test"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


class ExampleDataset(Dataset):
    """A list of example dicts."""

    def __init__(self, examples: list[dict[str, Tensor]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.examples[i]


class Task:
    """Base class: subclasses implement ``generate(split, n, generator)``."""

    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    kind: ClassVar[str] = "lm"
    pad_id: int = 0

    def __init__(self, config: TaskConfig) -> None:
        self.config = config
        self._splits: dict[str, ExampleDataset] = {}

    # --- what a task defines ---------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def num_classes(self) -> int | None:
        return None

    @property
    def seq_len(self) -> int:
        """Longest sequence the task produces."""
        raise NotImplementedError

    def generate(self, split: str, n: int, generator: torch.Generator) -> list[dict[str, Tensor]]:
        raise NotImplementedError

    # --- shared machinery ----------------------------------------------------------------------
    def split(self, name: str) -> ExampleDataset:
        """The examples of split ``name``, generated deterministically from the seed."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        if name not in self._splits:
            n = getattr(self.config, f"n_{name}")
            # distinct, fixed streams per split: the same seed always gives the same data
            g = torch.Generator().manual_seed(self.config.seed * 1000 + SPLITS.index(name))
            self._splits[name] = ExampleDataset(self.generate(name, n, g))
        return self._splits[name]

    def collate(self, examples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Pad sequence fields to the longest example; adds ``attention_mask`` (True = real)."""
        batch: dict[str, Tensor] = {}
        for key in examples[0]:
            values = [ex[key] for ex in examples]
            if values[0].dim() == 0:
                batch[key] = torch.stack(values)
                continue
            longest = max(v.shape[0] for v in values)
            fill = IGNORE if key == "labels" else self.pad_id
            out = torch.full((len(values), longest), fill, dtype=values[0].dtype)
            mask = torch.zeros(len(values), longest, dtype=torch.bool)
            for i, v in enumerate(values):
                out[i, : v.shape[0]] = v
                mask[i, : v.shape[0]] = True
            batch[key] = out
            if key.startswith("input_ids"):
                batch[key.replace("input_ids", "attention_mask")] = mask
        return batch

    def loader(self, split: str, batch_size: int, *, shuffle: bool | None = None, seed: int = 0) -> DataLoader:
        shuffle = split == "train" if shuffle is None else shuffle
        g = torch.Generator().manual_seed(seed)
        return DataLoader(self.split(split), batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate, generator=g)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
