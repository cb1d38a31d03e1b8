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


class _TouchOnLoad:
    """Unpickling this object opens ``path`` for writing: a payload that leaves a trace."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_image_refuses_a_batch_that_would_run_code(tmp_path):
    _cifar(tmp_path)
    # the payload is live: a plain unpickler runs it
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_TouchOnLoad(control))).close()
    assert control.exists()
    marker = tmp_path / "marker"
    crafted = tmp_path / "cifar-10-batches-py" / "test_batch"
    data = np.zeros((1, 3072), dtype=np.uint8)
    with open(crafted, "wb") as f:
        pickle.dump({b"data": data, b"labels": [0], b"filenames": [_TouchOnLoad(marker)]}, f)
    with pytest.raises(ValueError, match=r"test_batch[\s\S]*io\.open[\s\S]*CIFAR-10") as err:
        tasks.get("lra_image", data_dir=str(tmp_path), validation_size=0).split("test")
    assert not marker.exists()
    assert "official" in str(err.value)
    # an object array would unpickle its cells as arbitrary objects: refused by its dtype
    with open(crafted, "wb") as f:
        pickle.dump({b"data": np.array([[1, 2]], dtype=object), b"labels": [0]}, f)
    with pytest.raises(ValueError, match=r"test_batch: refused to load an array of dtype object"):
        tasks.get("lra_image", data_dir=str(tmp_path), validation_size=0).split("test")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_image_reads_batches_of_every_pickle_protocol(tmp_path, protocol):
    """The official files are Python 2 pickles (protocol 2, keys as bytes); a batch
    re-saved by Python 3 and NumPy 2 uses other globals and opcodes and is read the same."""
    batches = _cifar(tmp_path)
    data, labels = batches["test_batch"]
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data,
                     b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"]}, f, protocol=protocol)
    test = tasks.get("lra_image", data_dir=str(tmp_path), grayscale=False).split("test")
    assert [int(ex["label"]) for ex in test] == labels
    assert test[0]["input_ids"][:3].tolist() == [int(data[0, c * 1024]) for c in range(3)]


def _python2_pickle(data, labels):
    """A batch as Python 2's cPickle wrote the official files: protocol 2, str (bytes)
    keys and raw data as SHORT_BINSTRING/BINSTRING, numpy 1's ``numpy.core`` globals."""
    import struct

    def s(b):
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b

    def i(n):
        return b"J" + struct.pack("<i", n)

    out = b"\x80\x02}(" + s(b"labels") + b"](" + b"".join(i(y) for y in labels) + b"e"
    out += s(b"data") + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    out += i(0) + b"\x85" + s(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), b"b")
    out += b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86"
    out += b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"  # dtype("u1", 0, 1)
    out += b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb" + b"\x89" + s(data.tobytes()) + b"tb"
    return out + b"u."


def test_image_reads_a_python2_batch(tmp_path):
    batches = _cifar(tmp_path)
    data, labels = batches["test_batch"]
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(_python2_pickle(data, labels))
    test = tasks.get("lra_image", data_dir=str(tmp_path), grayscale=False).split("test")
    assert [int(ex["label"]) for ex in test] == labels
    assert test[0]["input_ids"][:3].tolist() == [int(data[0, c * 1024]) for c in range(3)]


def test_image_names_a_truncated_batch(tmp_path):
    _cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"test_batch.*cannot be read as a CIFAR-10 Python batch"):
        tasks.get("lra_image", data_dir=str(tmp_path), validation_size=0).split("test")
