"""LRA presets: one per task and family, every model within its task's parameter budget,
the S4 ones on the S4 paper's published settings."""

from __future__ import annotations

import pytest
import torch

from longarena.config import ConfigError
from longarena.train import configfile, presets
from longarena.train.objective import model_for_task

LRA_TASKS = ("listops", "text", "retrieval", "image", "pathfinder32", "pathx")
FAMILIES = ("attention", "s4", "s5", "mamba", "performer", "linformer", "nystromformer", "longformer", "bigbird", "retnet", "mega", "hyena")


def _parameters(name: str) -> int:
    run = configfile.resolve(configfile.merge(configfile.defaults(), presets.get(name)))
    # meta tensors cost no memory; RetNet's init copies values, which meta tensors cannot hold
    with torch.device("cpu" if name.endswith("/retnet") else "meta"):
        model = model_for_task(run.task, run.model)
    return sum(p.numel() for p in model.parameters())


def test_every_task_and_family_has_a_preset():
    assert presets.names() == sorted(f"lra/{t}/{f}" for t in LRA_TASKS for f in FAMILIES)


@pytest.mark.parametrize("task", LRA_TASKS)
def test_presets_build_within_the_task_budget(task):
    counts = {f: _parameters(f"lra/{task}/{f}") for f in FAMILIES}
    over = {f: n for f, n in counts.items() if n > presets.BUDGETS[task]}
    assert not over, f"over the {presets.BUDGETS[task]:,} budget of {task}: {over}"
    # a budget is a ceiling, not a target, but no preset is trivially small beside it (S4's
    # published ListOps model, 8 x 128, is a quarter of the others: it keeps the paper's shape)
    own = [n for f, n in counts.items() if not (f == "s4" and task in presets.S4_PAPER)]
    assert min(own) > 0.15 * presets.BUDGETS[task]


def test_s4_presets_follow_the_published_configs():
    # state-spaces/s4 configs/experiment/lra/s4-lra-listops.yaml: 8 layers x 128, d_state 64,
    # lr 0.01, batch 50, weight decay 0.05, dropout 0, 40 epochs of 96k examples, mean pooling;
    # warm-up from configs/scheduler/cosine_warmup.yaml (1000 steps)
    listops = presets.get("lra/listops/s4")
    m = listops["model"]
    assert (m["n_layers"], m["d_model"], m["dropout"], m["pooling"]) == (8, 128, 0.0, "mean")
    assert m["mixer"]["s4"]["d_state"] == 64 and m["mixer"]["s4"]["causal"] is False
    # the block: post-norm BatchNorm ("prenorm: false, norm: batch"), GLU after the SSM
    # ("postact: glu"), and the S4 layer alone (the S4 model has no MLP)
    assert (m["norm"], m["prenorm"], m["mlp"], m["mixer"]["s4"]["output"]) == ("batch", False, False, "glu")
    t = listops["train"]
    assert (t["lr"], t["batch_size"], t["weight_decay"], t["steps"], t["warmup"]) == (0.01, 50, 0.05, 40 * 96_000 // 50, 1000)
    # s4-lra-pathfinder.yaml: 6 layers x 256, d_state 64, lr 0.004, batch 64, weight decay 0.03,
    # dropout 0, 200 epochs of 160k examples, warm-up 2500 steps. The file reads out at the
    # last position; the preset reads the mean, a measured departure (last stayed at chance on
    # an H100 where mean reached 0.964 test: docs/training.md), and says so in its summary
    path = presets.get("lra/pathfinder32/s4")
    m = path["model"]
    assert (m["n_layers"], m["d_model"], m["dropout"], m["pooling"]) == (6, 256, 0.0, "mean")
    assert "read-out mean" in presets.summaries()["lra/pathfinder32/s4"]
    assert m["mixer"]["s4"]["d_state"] == 64
    # "prenorm: true, norm: batch, final_act: glu"; pixels as intensities (tokenize: false)
    assert (m["norm"], m["prenorm"], m["mlp"], m["mixer"]["s4"]["output"]) == ("batch", True, False, "glu")
    assert m["input_encoding"] == "scalar"
    t = path["train"]
    assert (t["lr"], t["batch_size"], t["weight_decay"], t["steps"], t["warmup"]) == (0.004, 64, 0.03, 200 * 160_000 // 64, 2500)
    assert listops["train"]["ssm_lr"] == path["train"]["ssm_lr"] == 0.001


def test_unknown_preset_lists_its_neighbours_and_aliases_work():
    with pytest.raises(ConfigError, match=r"unknown preset 'lra/listops/s44'.*lra/listops/s4"):
        presets.get("lra/listops/s44")
    assert presets.get("lra/text/transformer") == presets.get("lra/text/attention")
    assert "S4 paper" in presets.summaries()["lra/listops/s4"]
