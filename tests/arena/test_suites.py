"""Suites: studies in the suite data, suite files, and names checked against the registries."""

from __future__ import annotations

import json

import pytest

from longarena.arena.suites import SUITES, Cell, StudySpec, Suite, get_suite, load_suite, register_suite
from longarena.config import ConfigError

from .conftest import tiny_suite


def test_suite_round_trips_with_its_studies():
    suite = tiny_suite()
    again = Suite.from_dict(json.loads(json.dumps(suite.to_dict())))
    assert again == suite
    assert again.studies[2] == StudySpec("broken", {}, title="Broken")
    assert isinstance(again.cells[0], Cell) and again.cells[0].mixers == ("attention", "s4d")


def test_builtin_suites_name_only_registered_things():
    for name in SUITES:
        suite = get_suite(name)  # checks tasks, mixers and models
        assert suite.name == name and suite.cells
    assert {s.kind for s in get_suite("quick").studies} == {"bench", "state_recall", "train_short_test_long", "niah"}


def test_unknown_names_are_explained():
    with pytest.raises(ConfigError, match="unknown suite 'huge'; known suites: .*quick.*smoke"):
        get_suite("huge")
    with pytest.raises(ConfigError, match="unknown mixer.*'mambo'.*known mixers: .*mamba"):
        tiny_suite(cells=(Cell(mixers=("attention", "mambo")),)).check_names()
    with pytest.raises(ConfigError, match="unknown task 'recall'.*associative_recall"):
        Cell(task="recall").check_names()
    with pytest.raises(ConfigError, match="unknown model.*'perceptron'.*perceiver"):
        Cell(models={"perceptron": {}}).check_names()
    with pytest.raises(ConfigError, match="'all', 'causal' or a list"):
        Cell(mixers="every")
    with pytest.raises(ConfigError, match="unknown field.*'step'.*TrainConfig"):
        Cell(train={"step": 3})


def test_suite_files_load_and_name_bad_keys(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\n"
        "description: one cell from a file\n"
        "cells:\n"
        "  - task: majority\n"
        "    mixers: [attention, s4d]\n"
        "    d_model: 16\n"
        "    train: {steps: 2}\n"
        "studies:\n"
        "  - kind: bench\n"
        "    config: {lengths: [64]}\n"
    )
    suite = get_suite(str(path))
    assert suite.name == "mine" and suite.cells[0].mixers == ("attention", "s4d")
    assert suite.studies == (StudySpec("bench", {"lengths": [64]}),)
    as_json = tmp_path / "mine.json"
    as_json.write_text(json.dumps(suite.to_dict()))
    assert load_suite(as_json) == suite

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "cells": [{"task": "majority", "mixer": ["s4d"]}]}))
    with pytest.raises(ConfigError, match=r"bad.json: unknown field.*'mixer'.*Cell"):
        get_suite(str(bad))
    bad.write_text(json.dumps({"name": "bad", "cells": [{"task": "majority", "mixers": ["s4dd"]}]}))
    with pytest.raises(ConfigError, match="unknown mixer.*s4dd"):
        get_suite(str(bad))
    bad.write_text(json.dumps({"name": "bad", "cells": [{"task": "majority", "d_model": "wide"}]}))
    with pytest.raises(ConfigError, match=r"bad.json: Cell.d_model must be int, got str 'wide'"):
        get_suite(str(bad))
    bad.write_text(json.dumps({"name": "bad", "cells": [{"task": "majority", "train": {"steps": "many"}}]}))
    with pytest.raises(ConfigError, match=r"Cell.train .* wrong type"):
        get_suite(str(bad))
    bad.write_text(json.dumps({"name": "bad", "studies": [{"kind": "bench", "config": [64]}]}))
    with pytest.raises(ConfigError, match=r"StudySpec.config must be a dict"):
        get_suite(str(bad))
    bad.write_text("{ nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        get_suite(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        get_suite(str(tmp_path / "absent.yaml"))


def test_register_suite_adds_a_name(monkeypatch):
    monkeypatch.setitem(SUITES, "tiny", tiny_suite)  # restored after the test
    register_suite("tiny")(tiny_suite)
    assert get_suite("tiny") == tiny_suite()


def test_quick_listops_needs_more_than_a_bag_of_tokens(monkeypatch):
    """Swapping two digits keeps every token count; on most quick-suite trees some swap changes the answer."""
    from longarena import tasks
    from longarena.tasks import listops

    monkeypatch.setenv("LONGARENA_CACHE", "off")
    cell = next(c for c in get_suite("quick").cells if c.task == "listops")
    config = {**cell.task_config, "n_train": 0, "n_validation": 100, "n_test": 0}
    split = tasks.get("listops", **config).split("validation", workers=1)
    ambiguous = 0
    for ex in split:
        tokens = ex["input_ids"].tolist()
        label = listops.evaluate(tokens)
        assert label == int(ex["label"])
        slots = [i for i, t in enumerate(tokens) if listops.DIGIT0 <= t < listops.DIGIT0 + 10]
        for a in slots:
            for b in slots:
                swapped = list(tokens)
                swapped[a], swapped[b] = swapped[b], swapped[a]
                if listops.evaluate(swapped) != label:
                    ambiguous += 1
                    break
            else:
                continue
            break
    assert ambiguous > 0.5 * len(split), ambiguous  # 89 of these 100


def test_study_names_list_the_built_in_kinds_before_any_study_ran():
    from longarena.arena import studies

    assert {"bench", "state_recall", "train_short_test_long", "niah"} <= set(studies.names())
