"""LRA Text / Retrieval / Image loaders on small fixture files in the official layouts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from longarena import tasks
from longarena.config import ConfigError
from longarena.tasks.lra_files import MissingDataError


def _imdb(root, n=3):
    reviews = {}
    for part in ("train", "test"):
        for label in ("pos", "neg"):
            folder = root / "aclImdb" / part / label
            folder.mkdir(parents=True)
            for i in range(n):
                text = f"{part} {label} review {i} é".encode()
                (folder / f"{i}_7.txt").write_bytes(text)
                reviews[(part, label, i)] = text
    return reviews


def test_text_reads_bytes_and_labels(tmp_path):
    reviews = _imdb(tmp_path)
    task = tasks.get("lra_text", data_dir=str(tmp_path), max_length=20)
    train = task.split("train")
    assert len(train) == 6 and task.vocab_size == 257
    first = train[0]
    want = reviews[("train", "pos", 0)][:20]
    assert first["input_ids"].tolist() == [b + 1 for b in want] and int(first["label"]) == 1
    assert sorted(int(ex["label"]) for ex in train) == [0, 0, 0, 1, 1, 1]
    assert max(len(ex["input_ids"]) for ex in train) == 20
    # LRA validates on the test set; a held-out validation set is an option
    assert len(task.split("validation")) == 6
    held = tasks.get("lra_text", data_dir=str(tmp_path / "aclImdb"), validation_size=2)
    tr, va = held.split("train"), held.split("validation")
    assert len(tr) == 4 and len(va) == 2
    seen = {tuple(ex["input_ids"].tolist()) for ex in tr}
    assert not any(tuple(ex["input_ids"].tolist()) in seen for ex in va)
    batch = task.collate([train[0], train[3]])
    assert batch["input_ids"].shape[0] == 2 and batch["label"].tolist() == [1, 0]


def test_text_missing_files_are_named(tmp_path):
    with pytest.raises(MissingDataError, match=r"aclImdb/train/pos"):
        tasks.get("lra_text", data_dir=str(tmp_path)).split("train")
    with pytest.raises(ConfigError, match="data_dir is required"):
        tasks.get("lra_text")


def test_retrieval_reads_the_tsv_pairs(tmp_path):
    lines = ["1.0\tid_a\tid_b\tfirst paper\tsecond paper", "0\tid_c\tid_d\tthird\tfourth one"]
    for name in ("new_aan_pairs.train.tsv", "new_aan_pairs.eval.tsv", "new_aan_pairs.test.tsv"):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    task = tasks.get("lra_retrieval", data_dir=str(tmp_path), max_length=5)
    ds = task.split("validation")
    assert task.kind == "retrieval" and len(ds) == 2
    assert ds[0]["input_ids"].tolist() == [b + 1 for b in b"first"]
    assert ds[1]["input_ids_2"].tolist() == [b + 1 for b in b"fourt"]
    assert [int(ex["label"]) for ex in ds] == [1, 0]
    batch = task.collate(list(ds))
    assert {"input_ids", "input_ids_2", "attention_mask", "attention_mask_2", "label"} <= set(batch)
    (tmp_path / "new_aan_pairs.test.tsv").write_text("1\tonly three\tfields\n")
    with pytest.raises(ValueError, match="expected 5 tab-separated fields"):
        tasks.get("lra_retrieval", data_dir=str(tmp_path)).split("test")


def test_retrieval_missing_files_listed(tmp_path):
    (tmp_path / "new_aan_pairs.train.tsv").write_text("")
    with pytest.raises(MissingDataError, match="new_aan_pairs.eval.tsv[\\s\\S]*new_aan_pairs.test.tsv"):
        tasks.get("lra_retrieval", data_dir=str(tmp_path)).split("train")


def _cifar(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        batches[name] = (data, labels)
    return batches


def test_image_grey_and_colour_sequences(tmp_path):
    batches = _cifar(tmp_path)
    task = tasks.get("lra_image", data_dir=str(tmp_path), validation_size=3)
    train, val, test = task.split("train"), task.split("validation"), task.split("test")
    assert (len(train), len(val), len(test)) == (17, 3, 4)
    data, labels = batches["test_batch"]
    # luma of pixel (row 0, col 1) of the first test image, computed by hand
    r, g, b = (int(data[0, c * 1024 + 1]) for c in range(3))
    assert int(test[0]["input_ids"][1]) == round(0.299 * r + 0.587 * g + 0.114 * b)
    assert test[0]["input_ids"].shape == (1024,) and int(test[0]["label"]) == labels[0]
    colour = tasks.get("lra_image", data_dir=str(tmp_path), grayscale=False)
    px = colour.split("test")[0]["input_ids"]
    assert px.shape == (3072,) and px[3:6].tolist() == [r, g, b]


def test_image_validation_defaults_and_missing(tmp_path):
    _cifar(tmp_path)
    with pytest.raises(ConfigError, match="validation_size=5000 leaves no training data"):
        tasks.get("lra_image", data_dir=str(tmp_path)).split("train")
    assert len(tasks.get("lra_image", data_dir=str(tmp_path), validation_size=0).split("validation")) == 4
    with pytest.raises(ConfigError, match="n_test=9 but the test split has only 4"):
        tasks.get("lra_image", data_dir=str(tmp_path), n_test=9).split("test")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(MissingDataError, match="data_batch_3"):
        tasks.get("lra_image", data_dir=str(tmp_path)).split("test")
