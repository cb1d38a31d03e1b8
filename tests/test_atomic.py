"""Files written whole or not at all, by any number of writers at once."""

from __future__ import annotations

import os
import threading

from longarena.atomic import write_text


def test_concurrent_writers_of_one_file_never_collide(tmp_path):
    target = tmp_path / "out" / "results.json"
    texts = ["a" * 50_000, "b" * 70_000]
    errors = []
    start = threading.Barrier(len(texts))

    def writer(text):
        start.wait()
        try:
            for _ in range(150):
                write_text(target, text)
                assert target.read_text() in texts  # a reader never sees a half-written file
        except Exception as exc:  # collected: an exception in a thread would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in texts
    assert os.listdir(target.parent) == ["results.json"]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    write_text(target, "old")
    try:
        write_text(target, "\ud800")  # a lone surrogate cannot be encoded
    except UnicodeEncodeError:
        pass
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]


def test_the_file_mode_is_the_umasks_as_for_a_plain_write(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert write_text(tmp_path / "atomic.txt", "x").stat().st_mode == plain.stat().st_mode
