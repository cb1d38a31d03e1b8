"""Run configs: files and overrides layer in order, and every bad key or value names its path."""

from __future__ import annotations

import json

import pytest

from longarena.config import ConfigError
from longarena.train import configfile


def _resolve(**sections):
    return configfile.resolve(configfile.merge(configfile.defaults(), sections))


def test_yaml_and_json_files_and_set_overrides_layer_in_order(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "task: majority\n"
        "task_config: {num_classes: 3, n_train: 64}\n"
        "model: {d_model: 32, pattern: [s4], mixer: {s4: {d_state: 8}}}\n"
        "train: {lr: 3e-4, steps: 10}\n"  # YAML 1.1 reads an unquoted 3e-4 as a string
    )
    raw = configfile.read_file(tmp_path / "run.yaml")
    raw = configfile.merge(configfile.merge(configfile.defaults(), raw), configfile.parse_sets(["train.lr=1e-3", "model.mixer.s4.d_state=16"]))
    run = configfile.resolve(raw)
    assert run.train.lr == 1e-3 and run.train.steps == 10
    assert run.model["mixer"] == {"s4": {"d_state": 16}} and run.model["d_model"] == 32
    assert run.task.config.num_classes == 3 and run.task.config.n_train == 64
    assert run.raw["train"]["lr"] == 1e-3 and run.raw["task"] == "majority"
    (tmp_path / "run.json").write_text(json.dumps({"task": "majority", "train": {"lr": "3e-4"}}))
    assert configfile.resolve(configfile.merge(configfile.defaults(), configfile.read_file(tmp_path / "run.json"))).train.lr == 3e-4


def test_changing_the_task_or_pattern_drops_settings_that_no_longer_apply():
    base = configfile.merge(configfile.defaults(), {"task": "listops", "task_config": {"max_depth": 5},
                                                    "model": {"pattern": ["s4"], "mixer": {"s4": {"d_state": 4}}}})
    moved = configfile.merge(base, {"task": "majority", "model": {"pattern": ["mamba"]}})
    assert moved["task_config"] == {} and moved["model"]["mixer"] == {}
    configfile.resolve(moved)


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"train": {"lrr": 1}}, r"train\.lrr: unknown key; known: batch_size, .*lr,"),
        ({"model": {"d_model": "abc"}}, r"model\.d_model: expected int, got 'abc'"),
        ({"train": {"precision": "fp16"}}, r"train: precision must be one of fp32, bf16"),
        ({"train": {"lr": "fast"}}, r"train\.lr: expected float, got 'fast'"),
        ({"train": {"betas": 0.9}}, r"train\.betas: expected tuple"),
        ({"task_config": {"vocab_sise": 8}}, r"task_config\.vocab_sise: unknown key; known: .*vocab_size"),
        ({"task_config": {"n_train": -1}}, r"task_config: n_train must be >= 0"),
        ({"model": {"mixer": {"attention": {"n_head": 2}}}}, r"model\.mixer\.attention\.n_head: unknown key; known: .*n_heads"),
        ({"model": {"mixer": {"attention": {"n_heads": 2.5}}}}, r"model\.mixer\.attention\.n_heads: expected int, got 2\.5"),
        ({"model": {"mixer": {"atention": {}}}}, r"model\.mixer\.atention: unknown mixer; known mixers: .*attention"),
        ({"model": {"pattern": ["mambo"]}}, r"model: unknown mixer 'mambo'.*known mixers"),
        ({"model": {"vocab_size": 10}}, r"model\.vocab_size: set by the task"),
        ({"model": {"pooling": "first"}}, r"model\.pooling: associative_recall is a language-modelling task"),
        ({"model": {"input_encoding": "scalar"}}, r"model\.input_encoding: associative_recall is a language-modelling task"),
        ({"task": "listopz"}, r"task: unknown task 'listopz'; known tasks: .*listops"),
        ({"trian": {}}, r"trian: unknown section; known: task, task_config, model, train"),
    ],
)
def test_bad_keys_and_types_name_their_path(sections, message):
    with pytest.raises(ConfigError, match=message):
        _resolve(**sections)


def test_bad_files_and_set_entries_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        configfile.read_file(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        configfile.read_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping with sections"):
        configfile.read_file(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        configfile.parse_sets(["train.lr"])
    assert configfile.parse_sets(["model.pattern=[mamba, attention]", "train.seed=3", "task=listops"]) == {
        "model": {"pattern": ["mamba", "attention"]}, "train": {"seed": 3}, "task": "listops"}


def test_resume_conflicts_are_the_keys_that_change_the_model_or_data():
    saved = _resolve(train={"steps": 10}).raw
    same_shape = _resolve(train={"steps": 20, "lr": 1e-4}).raw
    assert configfile.resume_conflicts(saved, same_shape) == []
    assert configfile.changed_keys(saved, same_shape) == ["train.lr", "train.steps"]
    other = _resolve(model={"d_model": 32}, train={"batch_size": 8}, task_config={"num_pairs": 3}).raw
    assert configfile.resume_conflicts(saved, other) == ["model.d_model", "task_config.num_pairs", "train.batch_size"]


def test_a_run_saved_before_a_model_field_existed_resumes_when_the_field_keeps_its_default():
    """config.json of an older version lacks model fields added since (norm, prenorm, mlp):
    their defaults rebuild that model, so only a non-default value is a conflict."""
    new = _resolve(train={"steps": 10}).raw
    saved = json.loads(json.dumps(new))
    for key in ("norm", "prenorm", "mlp"):
        del saved["model"][key]
    assert configfile.resume_conflicts(saved, new) == []
    assert configfile.changed_keys(saved, new) == []
    batch_norm = _resolve(model={"norm": "batch"}, train={"steps": 10}).raw
    assert configfile.resume_conflicts(saved, batch_norm) == ["model.norm"]
