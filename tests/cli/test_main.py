"""The command line: every command has --help, list shows the registries, arena runs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import longarena
from longarena.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["list"], ["train"], ["arena"], ["bench"], ["extend"], ["data"], ["data", "show"], ["data", "make"], ["eval"], ["version"]])
def test_every_command_has_help(command):
    result = runner.invoke(app, command + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version_and_list():
    assert longarena.__version__ in runner.invoke(app, ["version"]).output
    result = runner.invoke(app, ["list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for expected in ("attention", "rope", "associative_recall", "quick", "lm"):
        assert expected in result.output
    assert "bogus" in runner.invoke(app, ["list", "bogus"]).output


def test_train_saves_a_checkpoint_and_bad_names_are_explained(tmp_path):
    result = runner.invoke(app, [
        "train", "--steps", "2", "--batch-size", "4", "--d-model", "16", "--layers", "1",
        "--task-config", "n_train=8", "--task-config", "n_validation=4", "--mixer-config", "attention.n_heads=2",
        "--out", str(tmp_path / "ck"),
    ])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ck" / "model.safetensors").is_file()
    bad = runner.invoke(app, ["train", "--pattern", "mambo"])
    assert bad.exit_code == 2 and "known mixers" in bad.output
    bad = runner.invoke(app, ["arena", "--suite", "huge"])
    assert bad.exit_code == 2 and "known suites" in bad.output


def test_data_show_writes_examples_and_pngs(tmp_path):
    result = runner.invoke(app, ["data", "show", "pathfinder32", "--n", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pathfinder32" / "grid.png").is_file()
    assert (tmp_path / "pathfinder32" / "examples.txt").read_text().count("\n") == 2
    bad = runner.invoke(app, ["data", "show", "pathfinder31"])
    assert bad.exit_code == 2 and "known tasks" in bad.output


def test_extend_patches_and_saves_a_tiny_llama(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    result = runner.invoke(app, ["extend", "--model", str(tmp_path / "tiny"), "--method", "linear",
                                 "--factor", "4", "--out", str(tmp_path / "long")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "long" / "config.json").read_text())
    assert "linear" in json.dumps(saved) and "4" in json.dumps(saved)
    bad = runner.invoke(app, ["extend", "--model", str(tmp_path / "tiny"), "--method", "stretch",
                              "--factor", "4", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "yarn" in bad.output


def test_eval_runs_on_a_longarena_checkpoint(tmp_path):
    trained = runner.invoke(app, [
        "train", "--steps", "1", "--batch-size", "4", "--d-model", "16", "--layers", "1",
        "--task-config", "n_train=8", "--task-config", "n_validation=4", "--task-config", "vocab_size=256",
        "--mixer-config", "attention.n_heads=2", "--out", str(tmp_path / "ck"),
    ])
    assert trained.exit_code == 0, trained.output
    # a byte-level vocabulary, so the evals' byte tokenizer fits the checkpoint
    result = runner.invoke(app, ["eval", "induction", "--model", str(tmp_path / "ck"), "--out", str(tmp_path / "run"),
                                 "--set", "seq_len=8", "--set", "batch=2"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert any(p.suffix == ".json" for p in (tmp_path / "run").iterdir())
    bad = runner.invoke(app, ["eval", "nope"])
    assert bad.exit_code == 2 and "known evals" in bad.output
