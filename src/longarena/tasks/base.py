"""The task interface: seeded splits of examples, cached on disk, and collates that pad or pack.

An example is a dict of tensors. Language-modelling tasks (``kind = "lm"``) give
``input_ids: (T,)`` and ``labels: (T,)`` (the next token to predict at each position, or
``IGNORE`` where nothing is scored). Classification tasks (``kind = "classification"``)
give ``input_ids: (T,)`` and a scalar ``label``. Retrieval tasks (``kind = "retrieval"``)
give two sequences ``input_ids`` / ``input_ids_2`` and a scalar ``label``.

A split of ``n`` examples is generated in shards of ``shard_size`` examples. Each shard
draws from its own generator, seeded from (seed, split, shard index), so a split is the
same whether it is generated in one process or spread over many, and the shards of an
expensive task (``parallel = True``) run on all cores. Expensive tasks
(``cache_by_default = True``) store their splits in the on-disk cache (see ``cache.py``).
"""

from __future__ import annotations

from concurrent import futures
import contextlib
import dataclasses
import hashlib
import multiprocessing
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from longarena.config import Config, ConfigError
# IGNORE stays importable from here for code written before it moved to the ground floor
from longarena.constants import IGNORE
from longarena.tasks import cache

SPLITS = ("train", "validation", "test")
KINDS = ("lm", "classification", "retrieval")
SHARD_TOKENS = 2**24


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


def _compact_dtype(t: Tensor) -> torch.dtype:
    """The smallest integer dtype that holds every value of ``t`` (storage only)."""
    if t.is_floating_point() or t.dtype == torch.bool or t.numel() == 0:
        return t.dtype
    lo, hi = int(t.min()), int(t.max())
    for dtype in (torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return dtype
    return torch.int64


class ExampleDataset(Dataset):
    """Examples stored column-wise: one flat tensor plus offsets per sequence field.

    A million small dicts of tensors cost far more memory and pickling time than a few
    large tensors, and Path-X splits are gigabytes of pixels, so each field is kept as one
    tensor in the smallest integer dtype that holds it and cast back on access.
    """

    def __init__(self, examples: list[dict[str, Tensor]] | None = None) -> None:
        self._n = 0
        self._scalars: dict[str, Tensor] = {}
        self._flat: dict[str, Tensor] = {}
        self._offsets: dict[str, Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        if examples:
            self._fill(examples)

    def _fill(self, examples: list[dict[str, Tensor]]) -> None:
        self._n = len(examples)
        for key, first in examples[0].items():
            values = [ex[key] for ex in examples]
            self._dtypes[key] = first.dtype
            if first.dim() == 0:
                stacked = torch.stack(values)
                self._scalars[key] = stacked.to(_compact_dtype(stacked))
                continue
            if first.dim() != 1:
                raise ValueError(
                    f"example field {key!r} must be a scalar or 1-D, got shape {tuple(first.shape)}"
                )
            flat = torch.cat(values)
            lengths = torch.tensor([v.shape[0] for v in values], dtype=torch.int64)
            self._flat[key] = flat.to(_compact_dtype(flat))
            self._offsets[key] = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not -self._n <= i < self._n:
            raise IndexError(f"example {i} out of range for a split of {self._n}")
        i %= self._n
        out: dict[str, Tensor] = {}
        for key, dtype in self._dtypes.items():
            if key in self._scalars:
                out[key] = self._scalars[key][i].to(dtype)
            else:
                start, end = self._offsets[key][i], self._offsets[key][i + 1]
                out[key] = self._flat[key][start:end].to(dtype)
        return out

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return (self[i] for i in range(self._n))

    @property
    def examples(self) -> list[dict[str, Tensor]]:
        return list(self)

    def lengths(self, key: str = "input_ids") -> Tensor:
        """Length of field ``key`` in every example: (N,)."""
        return self._offsets[key].diff()

    # --- (de)serialisation: plain tensors and strings, loadable with weights_only=True ----------
    def state(self) -> dict[str, Any]:
        return {
            "n": self._n,
            "dtypes": {k: str(v).removeprefix("torch.") for k, v in self._dtypes.items()},
            "scalars": self._scalars,
            "flat": self._flat,
            "offsets": self._offsets,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ExampleDataset:
        ds = cls()
        ds._n = int(state["n"])
        ds._dtypes = {k: getattr(torch, v) for k, v in state["dtypes"].items()}
        ds._scalars, ds._flat, ds._offsets = state["scalars"], state["flat"], state["offsets"]
        for key, off in ds._offsets.items():
            if off.shape != (ds._n + 1,) or int(off[-1]) != ds._flat[key].shape[0]:
                raise cache.CacheCorruptError(f"field {key!r}: offsets do not match the stored data")
        for key, values in ds._scalars.items():
            if values.shape != (ds._n,):
                raise cache.CacheCorruptError(f"field {key!r}: {values.shape[0]} values for {ds._n} examples")
        return ds

    @classmethod
    def concat(cls, parts: list[ExampleDataset]) -> ExampleDataset:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls()
        out = cls()
        out._n = sum(len(p) for p in parts)
        out._dtypes = dict(parts[0]._dtypes)

        def widened(tensors: list[Tensor]) -> list[Tensor]:
            # parts compacted to different dtypes meet in the widest, then compact again
            return [t.to(torch.int64) for t in tensors] if len({t.dtype for t in tensors}) > 1 else tensors

        for key in parts[0]._scalars:
            out._scalars[key] = torch.cat(widened([p._scalars[key] for p in parts]))
        for key in parts[0]._flat:
            flats = widened([p._flat[key] for p in parts])
            out._flat[key] = torch.cat(flats)
            shifts = torch.tensor([0] + [f.shape[0] for f in flats[:-1]]).cumsum(0)
            offs = [p._offsets[key][:-1] + s for p, s in zip(parts, shifts)]
            out._offsets[key] = torch.cat(offs + [torch.tensor([out._flat[key].shape[0]])])
        for key in out._scalars:
            out._scalars[key] = out._scalars[key].to(_compact_dtype(out._scalars[key]))
        for key in out._flat:
            out._flat[key] = out._flat[key].to(_compact_dtype(out._flat[key]))
        return out


def shard_seed(seed: int, split: str, shard: int) -> int:
    """A 63-bit seed for one shard; independent streams for every (seed, split, shard)."""
    digest = hashlib.sha256(f"longarena/{seed}/{split}/{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _generate_shard(
    cls: type[Task], config: dict[str, Any], split: str, shard: int, n: int
) -> dict[str, Any]:
    task = cls(cls.config_class.from_dict(config))
    return task._shard(split, shard, n).state()


@contextlib.contextmanager
def _spawnable_main() -> Iterator[None]:
    """Let spawned workers start when ``__main__`` is no file they can re-run.

    A spawned process re-runs the parent's ``__main__.__file__``; a program read from stdin
    (``python - <<EOF``) names ``<stdin>``, which does not exist, and every worker dies.
    The workers only need this package, so the name is hidden while they start.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or getattr(main, "__spec__", None) is not None or path is None or os.path.isfile(path):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _worker_init() -> None:
    torch.set_num_threads(1)


class Task:
    """Base class: subclasses implement ``generate(split, n, generator)``.

    Class attributes a subclass may set: ``kind`` (one of KINDS), ``version`` (bump it when
    the generator's output changes, so old cache files are not reused), ``shard_size``,
    ``parallel`` (generate shards in worker processes) and ``cache_by_default``.
    """

    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    kind: ClassVar[str] = "lm"
    registry_name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    shard_size: ClassVar[int] = 4096
    parallel: ClassVar[bool] = False
    cache_by_default: ClassVar[bool] = False
    pad_id: int = 0

    def __init__(self, config: TaskConfig) -> None:
        self.config = config
        self.use_cache = type(self).cache_by_default
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
    @property
    def examples_per_shard(self) -> int:
        """``shard_size``, lowered for long sequences so a shard stays near 16M tokens in memory
        (induction heads at 2^20 tokens would otherwise build 4096 x 1M int64 at once)."""
        return max(1, min(self.shard_size, SHARD_TOKENS // max(self.seq_len, 1)))

    def split_size(self, name: str) -> int:
        return getattr(self.config, f"n_{name}")

    def cache_path(self, name: str) -> Path | None:
        """Where split ``name`` is cached (None when caching is off)."""
        root = cache.cache_dir()
        if root is None or not self.use_cache:
            return None
        key = cache.cache_key(
            {
                "task": self.registry_name or type(self).__qualname__,
                "version": self.version,
                "config": self.config.to_dict(),
                "split": name,
                "n": self.split_size(name),
                "shard_size": self.examples_per_shard,
            }
        )
        return root / (self.registry_name or type(self).__name__) / f"{name}-{key[:32]}.pt"

    def split(self, name: str, *, progress: bool | None = None, workers: int | None = None) -> ExampleDataset:
        """The examples of split ``name``, generated deterministically from the seed.

        ``progress``: show a progress bar (default: when the split has several shards and
        stderr is a terminal). ``workers``: processes for ``parallel`` tasks (default: all
        cores, or ``$LONGARENA_WORKERS``); the data never depend on it.
        """
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        if name in self._splits:
            return self._splits[name]
        path = self.cache_path(name)
        if path is not None and path.exists():
            try:
                ds = ExampleDataset.from_state(cache.load(path))
                if len(ds) == self.split_size(name):
                    self._splits[name] = ds
                    return ds
            except (cache.CacheCorruptError, KeyError, TypeError, ValueError, AttributeError) as e:
                # a file that verifies but does not hold a split (e.g. an older layout) is stale
                print(f"longarena: cache file {path} unusable ({e}); regenerating", file=sys.stderr)
        ds = self._build(name, progress, workers)
        if path is not None:
            cache.save(path, ds.state())
        self._splits[name] = ds
        return ds

    def _shard(self, split: str, shard: int, n: int) -> ExampleDataset:
        g = torch.Generator().manual_seed(shard_seed(self.config.seed, split, shard))
        examples = self.generate(split, n, g)
        if len(examples) != n:
            raise RuntimeError(
                f"{type(self).__name__}.generate returned {len(examples)} examples, expected {n}"
            )
        return ExampleDataset(examples)

    def _build(self, name: str, progress: bool | None, workers: int | None) -> ExampleDataset:
        n = self.split_size(name)
        per = self.examples_per_shard
        sizes = [min(per, n - start) for start in range(0, n, per)]
        if progress is None:
            progress = len(sizes) > 1 and sys.stderr.isatty()
        if workers is None:
            workers = int(os.environ.get("LONGARENA_WORKERS", "0")) or (os.cpu_count() or 1)
        workers = max(1, min(workers, len(sizes))) if self.parallel else 1
        parts: list[ExampleDataset | None] = [None] * len(sizes)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, disable=not progress, transient=False) as bar:
            job = bar.add_task(f"{self.registry_name or type(self).__name__} {name}", total=n)
            if workers == 1:
                for i, size in enumerate(sizes):
                    parts[i] = self._shard(name, i, size)
                    bar.advance(job, size)
            else:
                config = self.config.to_dict()
                ctx = multiprocessing.get_context("spawn")  # fork under torch threads can deadlock
                try:
                    with _spawnable_main(), futures.ProcessPoolExecutor(
                        workers, mp_context=ctx, initializer=_worker_init
                    ) as pool:
                        pending = {
                            pool.submit(_generate_shard, type(self), config, name, i, size): i
                            for i, size in enumerate(sizes)
                        }
                        for done in futures.as_completed(pending):
                            i = pending[done]
                            parts[i] = ExampleDataset.from_state(done.result())
                            bar.advance(job, sizes[i])
                except futures.process.BrokenProcessPool as e:
                    # typically a script without `if __name__ == "__main__":`, which spawned
                    # workers re-run; the shards are seeded, so finishing here gives the same data
                    left = sum(size for i, size in enumerate(sizes) if parts[i] is None)
                    print(
                        f"longarena: worker processes failed ({e}); generating the {left:,} remaining "
                        f"{name} examples in this process, one core (slower). Spawned workers re-run your "
                        "script: guard its top level with `if __name__ == \"__main__\":`, or generate the "
                        f"data first with `longarena data make {self.registry_name or '<task>'}`",
                        file=sys.stderr,
                    )
                    for i, size in enumerate(sizes):
                        if parts[i] is None:
                            parts[i] = self._shard(name, i, size)
                            bar.advance(job, size)
        return ExampleDataset.concat([p for p in parts if p is not None])

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

    def collate_packed(self, examples: list[dict[str, Tensor]], length: int) -> dict[str, Tensor]:
        """Pack LM examples end to end into rows of ``length`` tokens (first fit, in order).

        Returns ``input_ids``, ``labels``, ``attention_mask`` (True = real) and
        ``segment_ids`` (0 = padding, 1, 2, ... = the example's index within its row) and
        ``position_ids`` (restarting at 0 for each example), all (R, length), so a model
        can keep examples from attending to each other. An example longer than ``length``
        is an error: packing never truncates.
        """
        if self.kind != "lm":
            raise ValueError(f"packing needs an 'lm' task; {type(self).__name__} is {self.kind!r}")
        rows: list[list[dict[str, Tensor]]] = []
        used: list[int] = []
        for ex in examples:
            t = ex["input_ids"].shape[0]
            if t > length:
                raise ValueError(f"an example of {t} tokens does not fit a packed row of {length}")
            for r, u in enumerate(used):
                if u + t <= length:
                    rows[r].append(ex)
                    used[r] += t
                    break
            else:
                rows.append([ex])
                used.append(t)
        R = len(rows)
        out = {
            "input_ids": torch.full((R, length), self.pad_id, dtype=torch.int64),
            "labels": torch.full((R, length), IGNORE, dtype=torch.int64),
            "attention_mask": torch.zeros(R, length, dtype=torch.bool),
            "segment_ids": torch.zeros(R, length, dtype=torch.int64),
            "position_ids": torch.zeros(R, length, dtype=torch.int64),
        }
        for r, row in enumerate(rows):
            at = 0
            for s, ex in enumerate(row, start=1):
                t = ex["input_ids"].shape[0]
                out["input_ids"][r, at : at + t] = ex["input_ids"]
                out["labels"][r, at : at + t] = ex["labels"]
                out["attention_mask"][r, at : at + t] = True
                out["segment_ids"][r, at : at + t] = s
                out["position_ids"][r, at : at + t] = torch.arange(t)
                at += t
        return out

    def loader(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool | None = None,
        seed: int = 0,
        pack_length: int | None = None,
    ) -> DataLoader:
        """A DataLoader over ``split``; ``pack_length`` packs LM examples into rows of that size."""
        shuffle = split == "train" if shuffle is None else shuffle
        g = torch.Generator().manual_seed(seed)
        if pack_length is None:
            collate = self.collate
        else:
            if self.kind != "lm":
                raise ValueError(f"pack_length needs an 'lm' task; {type(self).__name__} is {self.kind!r}")

            def collate(examples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
                return self.collate_packed(examples, pack_length)

        return DataLoader(
            self.split(split), batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=g
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
