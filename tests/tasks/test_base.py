"""Task machinery: seeded shards, the on-disk cache (atomic, versioned, corruption-proof),
column storage, padding and packing collates, registry errors."""

from __future__ import annotations

import pytest
import torch

from longarena import tasks
from longarena.config import ConfigError
from longarena.registry import UnknownNameError
from longarena.tasks import cache
from longarena.tasks.base import IGNORE, ExampleDataset, shard_seed


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGARENA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _same(a: ExampleDataset, b: ExampleDataset) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def test_unknown_task_lists_known_ones():
    with pytest.raises(UnknownNameError, match="known tasks: .*listops.*mqar"):
        tasks.get("lisstops")


def test_unknown_config_field_names_the_known_fields():
    with pytest.raises(ConfigError, match="num_pairs"):
        tasks.get("mqar", num_pairz=3)


def test_same_seed_same_split_and_splits_differ():
    a = tasks.get("mqar", vocab_size=64, num_pairs=4, length=32, n_train=64, n_test=64)
    b = tasks.get("mqar", vocab_size=64, num_pairs=4, length=32, n_train=64, n_test=64)
    assert _same(a.split("train"), b.split("train"))
    assert not _same(a.split("train"), a.split("test"))
    c = tasks.get("mqar", vocab_size=64, num_pairs=4, length=32, n_train=64, seed=1)
    assert not _same(a.split("train"), c.split("train"))


def test_shards_are_prefix_stable_and_seeded_per_shard():
    """A split built from several shards equals one built shard by shard by hand."""
    task = tasks.get("copying", n_train=25)
    task.shard_size = 10
    split = task.split("train")
    by_hand = [ex for i, n in enumerate((10, 10, 5)) for ex in task._shard("train", i, n)]
    assert _same(split, ExampleDataset(by_hand))
    assert len({shard_seed(0, s, i) for s in ("train", "test") for i in range(3)}) == 6


def test_worker_count_does_not_change_the_data(cache_root):
    cfg = dict(min_length=20, max_length=60, max_depth=5, n_train=12, n_validation=0, n_test=0)
    one = tasks.get("listops", **cfg)
    one.shard_size, one.use_cache = 4, False
    two = tasks.get("listops", **cfg)
    two.shard_size, two.use_cache = 4, False
    assert _same(one.split("train", workers=1), two.split("train", workers=2))


def test_cache_roundtrip_is_reused_and_keyed_by_version(cache_root, monkeypatch):
    task = tasks.get("listops", min_length=20, max_length=60, n_train=8, n_validation=0, n_test=0)
    path = task.cache_path("train")
    assert path is not None and str(path).startswith(str(cache_root))
    first = task.split("train")
    assert path.exists()
    # a fresh task reads the file instead of generating
    again = tasks.get("listops", min_length=20, max_length=60, n_train=8, n_validation=0, n_test=0)
    monkeypatch.setattr(type(again), "generate", lambda *a: pytest.fail("regenerated despite a valid cache"))
    assert _same(first, again.split("train"))
    monkeypatch.undo()
    monkeypatch.setenv("LONGARENA_CACHE", str(cache_root))
    monkeypatch.setattr(type(task), "version", 99)
    assert task.cache_path("train") != path
    other_seed = tasks.get("listops", min_length=20, max_length=60, n_train=8, seed=3)
    assert other_seed.cache_path("train") != path
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "stale_layout"])
def test_corrupt_cache_file_is_detected_and_regenerated(cache_root, damage, capsys):
    cfg = dict(min_length=20, max_length=60, n_train=6, n_validation=0, n_test=0)
    good = tasks.get("listops", **cfg).split("train")
    path = tasks.get("listops", **cfg).cache_path("train")
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        path.write_bytes(raw[:-10] + bytes([raw[-10] ^ 0xFF]) + raw[-9:])
    elif damage == "garbage":
        path.write_bytes(b"not a split")
    else:  # a valid file whose payload is not a split of this layout
        cache.save(path, {"n": 6, "columns": []})
    if damage != "stale_layout":
        with pytest.raises(cache.CacheCorruptError):
            cache.load(path)
    again = tasks.get("listops", **cfg).split("train")
    assert _same(good, again)
    assert "unusable" in capsys.readouterr().err
    cache.load(path)  # rewritten and valid


def test_cache_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("LONGARENA_CACHE", "off")
    assert cache.cache_dir() is None
    assert tasks.get("listops").cache_path("train") is None


def test_column_storage_roundtrip_and_compact_dtypes():
    examples = [
        {
            "input_ids": torch.tensor([3, 1, 4]),
            "labels": torch.tensor([IGNORE, 5, 9]),
            "label": torch.tensor(2),
        },
        {"input_ids": torch.tensor([1000]), "labels": torch.tensor([7]), "label": torch.tensor(0)},
    ]
    ds = ExampleDataset(examples)
    state = ds.state()
    assert state["flat"]["input_ids"].dtype == torch.int16
    assert state["flat"]["labels"].dtype == torch.int16
    back = ExampleDataset.from_state(state)
    for a, b in zip(examples, back):
        for k in a:
            assert torch.equal(a[k], b[k]) and b[k].dtype == a[k].dtype
    assert back.lengths().tolist() == [3, 1]
    both = ExampleDataset.concat([ds, ExampleDataset(examples[:1])])
    assert [ex["input_ids"].tolist() for ex in both] == [[3, 1, 4], [1000], [3, 1, 4]]
    with pytest.raises(IndexError):
        ds[2]


def test_pad_collate():
    task = tasks.get("copying", num_tokens=2)
    exs = [
        {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([IGNORE, 6, 7])},
        {"input_ids": torch.tensor([8]), "labels": torch.tensor([9])},
    ]
    b = task.collate(exs)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["labels"].tolist() == [[IGNORE, 6, 7], [9, IGNORE, IGNORE]]
    assert b["attention_mask"].tolist() == [[True] * 3, [True, False, False]]


def test_packed_collate_keeps_every_token_and_marks_documents():
    task = tasks.get("copying", num_tokens=3, delay=1, n_train=5)  # 7 tokens each
    exs = list(task.split("train"))
    b = task.collate_packed(exs, 16)
    assert b["input_ids"].shape == (3, 16)  # 2 + 2 + 1 examples
    # every example appears whole, in order, with its own segment id and restarted positions
    recovered = []
    for r in range(3):
        for s in b["segment_ids"][r].unique().tolist():
            if s == 0:
                continue
            sel = b["segment_ids"][r] == s
            recovered.append(b["input_ids"][r][sel].tolist())
            assert b["position_ids"][r][sel].tolist() == list(range(int(sel.sum())))
            assert torch.equal(b["labels"][r][sel], exs[len(recovered) - 1]["labels"])
    assert recovered == [ex["input_ids"].tolist() for ex in exs]
    assert (b["labels"][~b["attention_mask"]] == IGNORE).all()
    with pytest.raises(ValueError, match="does not fit"):
        task.collate_packed(exs, 6)
    batch = next(iter(task.loader("train", 5, pack_length=16)))
    assert batch["input_ids"].shape == (3, 16)
    with pytest.raises(ValueError, match="'lm' task"):
        tasks.get("majority").loader("train", 4, pack_length=16)


def test_long_sequences_get_smaller_shards():
    """A 2^20-token induction split is built in shards of 16 examples, not 4096."""
    task = tasks.get("induction_heads", length=256, test_length=2**20, n_test=2)
    assert task.examples_per_shard == 2**24 // (2**20) == 16
    assert tasks.get("induction_heads", length=256).examples_per_shard == task.shard_size
    ds = task.split("test")
    assert ds.lengths().tolist() == [2**20, 2**20]
    assert ds.state()["flat"]["input_ids"].dtype == torch.uint8  # stored as bytes


_PROGRAM = """
import torch
from longarena import tasks
t = tasks.get("listops", min_length=20, max_length=60, max_depth=5, n_train=12, n_validation=0, n_test=0)
t.shard_size, t.use_cache = 4, False
ds = t.split("train", workers=WORKERS)
print(sum(int(ex["input_ids"].sum()) * (i + 1) for i, ex in enumerate(ds)))
"""


def _run_program(tmp_path, workers: int, how: str):
    import subprocess
    import sys

    program = _PROGRAM.replace("WORKERS", str(workers))
    if how == "stdin":
        cmd, stdin = [sys.executable, "-"], program
    else:  # a script file with no `if __name__ == "__main__":` guard
        path = tmp_path / "unguarded.py"
        path.write_text(program)
        cmd, stdin = [sys.executable, str(path)], None
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip(), out.stderr


def test_workers_start_from_a_program_read_from_stdin(tmp_path):
    """`python - <<EOF` names its main `<stdin>`, which spawned workers cannot re-run; they
    start anyway (no fallback to one process) and give the one-process data."""
    alone, _ = _run_program(tmp_path, 1, "stdin")
    pooled, err = _run_program(tmp_path, 2, "stdin")
    assert "worker processes failed" not in err
    assert pooled == alone


def test_an_unguarded_script_falls_back_to_one_process_and_says_how_to_fix_it(tmp_path):
    alone, _ = _run_program(tmp_path, 1, "file")
    pooled, err = _run_program(tmp_path, 2, "file")
    assert pooled == alone
    assert "worker processes failed" in err and "12 remaining train examples" in err
    assert 'if __name__ == "__main__":' in err and "longarena data make listops" in err
