"""The GPU suites ``lra`` and ``full``: built from the LRA presets, same steps per task,
local-file tasks only when their data is there; a cell's ``backbone`` fields reach the model."""

from __future__ import annotations

import pytest

from longarena.arena import runner, studies, suites
from longarena.arena.suites import Cell, get_suite, lra_cells
from longarena.config import ConfigError
from longarena.train import presets

FILE_TASKS = {"text", "retrieval", "image"}


def _by_task_and_mixer(cells):
    seen = {}
    for cell in cells:
        for mixer in cell.mixers:
            key = (cell.task, mixer)
            assert key not in seen, f"{key} is in two cells"
            seen[key] = cell
    return seen


@pytest.mark.parametrize("with_data", [False, True])
def test_lra_cells_are_the_shared_presets_with_one_budget_per_task(tmp_path, with_data):
    if with_data:
        for short in FILE_TASKS:
            (tmp_path / presets.TASKS[short][1]["data_dir"]).mkdir(parents=True)
    cells, skipped = lra_cells(data_root=tmp_path)
    present = [t for t in presets.TASKS if with_data or t not in FILE_TASKS]
    assert sorted(s.split()[0] for s in skipped) == ([] if with_data else sorted(FILE_TASKS))
    seen = _by_task_and_mixer(cells)
    expected = {(presets.TASKS[t][0], presets.FAMILIES[f]) for t in present for f in presets.FAMILIES}
    assert set(seen) == expected
    for short in present:
        for family, mixer in presets.FAMILIES.items():
            cell, run = seen[(presets.TASKS[short][0], mixer)], presets.shared(short, family)
            assert (cell.d_model, cell.n_layers) == (run["model"]["d_model"], run["model"]["n_layers"])
            assert cell.mixer_overrides[mixer] == run["model"]["mixer"][mixer]
            assert cell.task_config == run["task_config"]
            assert cell.backbone["dropout"] == run["model"]["dropout"]
            if family == "s4" and short in presets.S4_PAPER:
                # S4 keeps its published block (the paper's norm, residual order, no MLP, GLU
                # output, and pixels as intensities on Pathfinder) in the shared shape
                paper = presets.S4_PAPER[short]["model"]
                assert {k: cell.backbone[k] for k in presets.S4_BLOCK if k in paper} == {
                    k: paper[k] for k in presets.S4_BLOCK if k in paper}
                assert cell.mixer_overrides["s4"]["output"] == "glu"
                assert "pooling" not in cell.backbone or cell.backbone["pooling"] == run["model"].get("pooling")
            else:
                assert not set(presets.S4_BLOCK) & set(cell.backbone)
            t = cell.train_config()
            assert t.steps == suites.LRA_SUITE_STEPS[short]
            assert (t.lr, t.batch_size, t.weight_decay, t.ssm_lr, t.grad_accum) == (
                run["train"]["lr"], run["train"]["batch_size"], run["train"]["weight_decay"], run["train"].get("ssm_lr"),
                run["train"].get("grad_accum", 1))
    # Path-X (16,384 tokens) in micro-batches of 8: whole batches of 32 ran three families out
    # of an H100's memory in a GPU run of this suite
    pathx = [c for c in cells if c.task == "pathx"]
    assert pathx and all(c.train_config().batch_size // c.train_config().grad_accum == 8 for c in pathx)
    assert all(c.train_config().eval_batch_size == 8 for c in pathx)


def test_lra_and_full_suites_check_their_names_and_study_configs():
    lra, full = get_suite("lra"), get_suite("full")
    assert "Skipped" in lra.description or all(c.task not in ("lra_text",) for c in lra.cells)
    assert {c.task for c in lra.cells} <= {c.task for c in full.cells}
    assert {s.kind for s in full.studies} == {"bench", "state_recall", "train_short_test_long", "niah"}
    assert {s.kind for s in full.studies} <= set(studies.names())
    # every study's settings are known keys of its config (a typo would only fail on the GPU)
    from longarena.arena.bench import BenchConfig
    from longarena.arena.study_kinds.niah import NiahStudyConfig
    from longarena.arena.study_kinds.state_recall import StateRecallConfig
    from longarena.arena.study_kinds.train_short_test_long import LengthConfig

    classes = {"bench": BenchConfig, "state_recall": StateRecallConfig, "train_short_test_long": LengthConfig,
               "niah": NiahStudyConfig}
    for spec in full.studies:
        config = dict(spec.config)
        assert config.pop("device", None) == "cuda"  # every GPU-suite study runs there (this CI has none)
        classes[spec.kind].from_dict(config)


def test_cell_backbone_fields_reach_the_model():
    base = dict(task="listops", task_config=dict(max_depth=2, max_args=3, min_length=3, max_length=12, n_train=32,
                                                 n_validation=16, n_test=0),
                mixers=("attention",), d_model=16, n_layers=1, train=dict(steps=1, batch_size=8, eval_batches=1))
    bad = runner.run_cell(Cell(**base, backbone={"pooling": "max"}), "attention")
    assert bad.error is not None and "pooling must be one of" in bad.error
    good = runner.run_cell(Cell(**base, backbone={"pooling": "last"}), "attention")
    assert good.error is None
    assert runner.cell_key(Cell(**base, backbone={"pooling": "last"}), "attention") != runner.cell_key(Cell(**base), "attention")
    with pytest.raises(ConfigError, match=r"Cell.backbone cannot set \['d_model'\]"):
        Cell(**base, backbone={"d_model": 8})
