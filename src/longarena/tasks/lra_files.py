"""LRA Text, Retrieval and Image: loaders for the official files, read from a local folder.

These three LRA tasks use public datasets that cannot be generated, so they are read
from the files their official releases ship. Nothing is downloaded: point ``data_dir`` at
the folder, and a missing file is reported with the exact names expected.

- ``lra_text``: byte-level IMDB sentiment (Maas et al. 2011). Expects the Stanford
  ``aclImdb`` layout: ``aclImdb/{train,test}/{pos,neg}/*.txt``. Tokens are bytes + 1
  (0 is padding), vocabulary 257; label 1 = positive. Reviews longer than ``max_length``
  bytes are cut to ``max_length``, as the benchmark does (4096 here; set it to keep more).
- ``lra_retrieval``: byte-level AAN citation matching (Radev et al. 2013): do two papers
  cite each other? Expects the LRA release's ``new_aan_pairs.{train,eval,test}.tsv``
  (tab-separated, no header: label, id1, id2, text1, text2). Each text is cut to
  ``max_length`` bytes (4000 in LRA). Examples carry ``input_ids`` and ``input_ids_2``.
- ``lra_image``: CIFAR-10 (Krizhevsky 2009) as a sequence of pixels. Expects the Python
  version's ``cifar-10-batches-py/{data_batch_1..5,test_batch}``. LRA turns the image to
  grey (ITU-R 601 luma, 1024 tokens of 0-255); ``grayscale=False`` keeps the colour as
  3072 tokens, pixel by pixel with R, G, B interleaved. The batches are pickles; they are read
  by an unpickler that resolves only the globals of numpy arrays, so a crafted file is
  refused before it can run code.

Validation: LRA evaluates Text and Retrieval on their test sets and has no separate
validation split for Text, so ``lra_text`` uses the test set as validation unless
``validation_size`` > 0 holds out that many training reviews (chosen by the seed).
``lra_image`` holds out ``validation_size`` (5000) training images the same way.
``n_train`` / ``n_validation`` / ``n_test`` of 0 mean "every example"; a positive value
takes the first n (an error if fewer exist).
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from longarena.config import ConfigError
from longarena.tasks import register
from longarena.tasks.base import ExampleDataset, Task, TaskConfig


class MissingDataError(FileNotFoundError):
    """A local dataset file the loader needs is not there."""


@dataclasses.dataclass
class FileTaskConfig(TaskConfig):
    n_train: int = 0
    n_validation: int = 0
    n_test: int = 0
    data_dir: str = ""
    validation_size: int = 0

    def validate(self) -> None:
        super().validate()
        if not self.data_dir:
            raise ConfigError(
                f"{type(self).__name__}: data_dir is required (the local folder holding the official files)"
            )
        if self.validation_size < 0:
            raise ConfigError(f"validation_size must be >= 0, got {self.validation_size}")


class FileTask(Task):
    """A task read from local files: ``read(split)`` gives every example of a split."""

    config_class = FileTaskConfig

    @property
    def root(self) -> Path:
        return Path(self.config.data_dir).expanduser()

    def read(self, split: str) -> list[dict[str, Tensor]]:
        raise NotImplementedError

    def _held_out(self) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
        """(train, validation): ``validation_size`` training examples picked by the seed."""
        examples = self.read("train")
        k = self.config.validation_size
        if k >= len(examples):
            raise ConfigError(f"validation_size={k} leaves no training data: only {len(examples)} examples")
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(self.config.seed))
        held = set(order[:k].tolist())
        return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]

    def _examples(self, split: str) -> list[dict[str, Tensor]]:
        if self.config.validation_size > 0 and split in ("train", "validation"):
            train, validation = self._held_out()
            return train if split == "train" else validation
        return self.read(split)

    def split_size(self, name: str) -> int:
        return len(self.split(name))

    def cache_path(self, name: str) -> None:
        """Never cached: the files are the data, and a key could not see them change."""
        return None

    def _build(self, name, progress, workers):
        examples = self._examples(name)
        want = getattr(self.config, f"n_{name}")
        if want > len(examples):
            raise ConfigError(f"n_{name}={want} but the {name} split has only {len(examples)} examples")
        return ExampleDataset(examples[:want] if want else examples)

    def generate(self, split, n, generator):
        return self._examples(split)[:n]

    def _require(self, paths: list[Path], what: str) -> None:
        missing = [p for p in paths if not p.exists()]
        if missing:
            expected = "\n  ".join(str(p) for p in paths)
            raise MissingDataError(
                f"{self.registry_name}: {len(missing)} of the expected paths are missing "
                f"(first: {missing[0]}).\nExpected {what}:\n  {expected}\n"
                f"Set data_dir to the folder that holds them."
            )


def _bytes(text: bytes, max_length: int) -> Tensor:
    return torch.frombuffer(bytearray(text[:max_length]), dtype=torch.uint8).to(torch.int64) + 1


@dataclasses.dataclass
class TextConfig(FileTaskConfig):
    max_length: int = 4096

    def validate(self) -> None:
        super().validate()
        if self.max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {self.max_length}")


class _ByteTask(FileTask):
    """Two-class tasks over documents as bytes 1..256 (0 pads), cut to ``max_length``."""

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def num_classes(self) -> int:
        return 2

    @property
    def seq_len(self) -> int:
        return self.config.max_length


@register("lra_text")
class LRAText(_ByteTask):
    """LRA Text: byte-level IMDB sentiment from a local aclImdb folder."""

    config_class = TextConfig
    kind = "classification"

    def _imdb_root(self) -> Path:
        # data_dir may be the folder holding aclImdb/ or aclImdb/ itself
        return self.root if (self.root / "train").is_dir() else self.root / "aclImdb"

    def read(self, split):
        part = "train" if split == "train" else "test"
        base = self._imdb_root()
        folders = [base / part / "pos", base / part / "neg"]
        self._require(folders, f"the aclImdb layout ({part} reviews, one .txt file per review) under {base}")
        examples = []
        for folder, label in zip(folders, (1, 0)):
            files = sorted(folder.glob("*.txt"))
            if not files:
                raise MissingDataError(f"{self.registry_name}: no .txt reviews in {folder}")
            for f in files:
                examples.append(
                    {
                        "input_ids": _bytes(f.read_bytes(), self.config.max_length),
                        "label": torch.tensor(label),
                    }
                )
        return examples


@dataclasses.dataclass
class RetrievalConfig(TextConfig):
    max_length: int = 4000


AAN_FILES = {
    "train": "new_aan_pairs.train.tsv",
    "validation": "new_aan_pairs.eval.tsv",
    "test": "new_aan_pairs.test.tsv",
}


@register("lra_retrieval")
class LRARetrieval(_ByteTask):
    """LRA Retrieval: do two AAN papers (bytes) cite each other? From the LRA release TSVs."""

    config_class = RetrievalConfig
    kind = "retrieval"

    def read(self, split):
        paths = [self.root / name for name in AAN_FILES.values()]
        self._require(paths, "the LRA release's AAN pair files (e.g. lra_release/tsv_data/)")
        path = self.root / AAN_FILES[split]
        examples = []
        with path.open("rb") as f:
            for line_no, line in enumerate(f, start=1):
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                fields = line.split(b"\t")
                if len(fields) != 5:
                    raise ValueError(
                        f"{path}:{line_no}: expected 5 tab-separated fields (label, id1, id2, text1, text2), "
                        f"got {len(fields)}"
                    )
                label = int(float(fields[0]))
                if label not in (0, 1):
                    raise ValueError(f"{path}:{line_no}: label must be 0 or 1, got {fields[0]!r}")
                examples.append(
                    {
                        "input_ids": _bytes(fields[3], self.config.max_length),
                        "input_ids_2": _bytes(fields[4], self.config.max_length),
                        "label": torch.tensor(label),
                    }
                )
        return examples


@dataclasses.dataclass
class ImageConfig(FileTaskConfig):
    validation_size: int = 5000
    grayscale: bool = True


CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


class UnsafeDataError(ValueError):
    """A data file holds something its format does not, such as a pickled call."""


# numpy's own functions, taken from its reduce: a file written under numpy 1.x names them in
# numpy.core, one written under 2.x in numpy._core, and importing the old alias warns
_NUMPY_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_NUMPY_FROMBUFFER = np.zeros(0).__reduce_ex__(5)[0]


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise UnsafeDataError(f"an array of type {subtype!r}")
    return _NUMPY_RECONSTRUCT(subtype, shape, dtype)


def _dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:  # an object array would unpickle arbitrary objects into its cells
        raise UnsafeDataError(f"an array of dtype {dtype} (Python objects)")
    return dtype


def _latin1(text, encoding):
    # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocols below 3
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafeDataError(f"_codecs.encode to {encoding!r}")
    return text.encode("latin1")


# Everything a CIFAR-10 batch needs beyond the built-in dicts, lists, bytes, str and ints
# (which need no global): arrays as numpy pickles them in protocols 2 to 5.
_CIFAR_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _NUMPY_FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _NUMPY_FROMBUFFER,
    ("_codecs", "encode"): _latin1,
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _CIFAR_GLOBALS[module, name]
        except KeyError:
            raise UnsafeDataError(f"{module}.{name}") from None


def read_cifar_batch(path: Path) -> dict[bytes, object]:
    """One CIFAR-10 Python batch, without running code:
    ``{b"data": (N, 3072) uint8, b"labels": N ints 0-9, ...}``.

    The official files are pickles, and a plain ``pickle.load`` would call whatever a crafted
    file names. Only the globals numpy's array pickles need are resolved; any other one
    is refused before it is called.
    """
    official = "Use the official cifar-10-batches-py files (https://www.cs.toronto.edu/~kriz/cifar.html)."
    try:
        with path.open("rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except UnsafeDataError as exc:
        raise UnsafeDataError(
            f"{path}: refused to load {exc}, which a CIFAR-10 Python batch never holds (only dicts, lists, "
            f"bytes, ints and numpy arrays); the file may be crafted to run code. {official}"
        ) from None
    except Exception as exc:  # truncated or garbled pickles raise a wide range of types
        raise ValueError(
            f"{path} cannot be read as a CIFAR-10 Python batch ({type(exc).__name__}: {exc}). {official}"
        ) from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = list(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels', got {found}. {official}")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: expected data as a uint8 array (N, 3072), got {what}. {official}")
    if not isinstance(labels, list) or len(labels) != data.shape[0] or not all(
        isinstance(y, int) and 0 <= y < 10 for y in labels
    ):
        raise ValueError(f"{path}: expected {data.shape[0]} labels, integers 0-9 (one per image). {official}")
    return batch


@register("lra_image")
class LRAImage(FileTask):
    """LRA Image: CIFAR-10 as a sequence of 1024 grey pixels, from the local Python batches."""

    config_class = ImageConfig
    kind = "classification"

    @property
    def vocab_size(self) -> int:
        return 256

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def seq_len(self) -> int:
        return 1024 if self.config.grayscale else 3072

    def _folder(self) -> Path:
        # data_dir may be the folder holding cifar-10-batches-py/ or that folder itself
        return self.root if (self.root / "test_batch").is_file() else self.root / "cifar-10-batches-py"

    def read(self, split):
        base = self._folder()
        self._require(
            [base / n for n in CIFAR_TRAIN + ["test_batch"]], f"the CIFAR-10 Python batches in {base}"
        )
        names = ["test_batch"] if split == "test" else CIFAR_TRAIN
        examples = []
        for name in names:
            batch = read_cifar_batch(base / name)
            data, labels = batch[b"data"], batch[b"labels"]
            rgb = data.reshape(-1, 3, 1024).astype(np.float64)  # (N, channel, pixel), rows of 32
            if self.config.grayscale:
                pixels = np.round(rgb[:, 0] * 0.299 + rgb[:, 1] * 0.587 + rgb[:, 2] * 0.114)
            else:
                pixels = rgb.transpose(0, 2, 1).reshape(-1, 3072)  # (N, 1024 * RGB)
            pixels = torch.from_numpy(pixels.astype(np.int64))
            examples.extend(
                {"input_ids": pixels[i], "label": torch.tensor(int(y))} for i, y in enumerate(labels)
            )
        return examples

    def _examples(self, split):
        if split == "validation" and self.config.validation_size == 0:
            return self.read("test")
        return super()._examples(split)
