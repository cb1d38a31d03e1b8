"""Named run configs: ``lra/<task>/<family>`` for every Long Range Arena task and mixer family.

Each preset is a run-config overlay (sections ``task``, ``task_config``, ``model``,
``train``) holding the benchmark's settings: the task at its LRA length, a model within
the task's parameter budget, and the optimiser schedule. Two S4 presets follow the S4
papers' published experiment files (state-spaces/s4, ``configs/experiment/lra/s4-lra-listops.yaml``
and ``s4-lra-pathfinder.yaml``): width, depth, state size, learning rate, batch, weight decay,
dropout, warm-up, epochs, read-out pooling and the block (batch norm, post-norm on ListOps,
the layer's GLU output, no MLP; Pathfinder's pixels as intensities). Their learning rate for
the SSM's own parameters (0.001) is ``train.ssm_lr``. One measured departure: Pathfinder reads
out by the mean (``S4_PATHFINDER_READOUT``), where the file reads the last position.

Budgets (``BUDGETS``, parameters including embeddings and head) are the size of LRA's
reference Transformer for the task, from the benchmark's own configs
(google-research/long-range-arena, ``lra_benchmarks/*/configs/base_*.py``): ListOps 6
layers of width 512 with 2048-wide MLPs, Text 4 x 256 / 1024, Retrieval 4 x 128 / 512.
LRA's image models are one-layer and tiny (width 32 to 128) and fail Path-X, while the
state-space line of work (S4 and after) trains 6 x 256 models there; for Image,
Pathfinder-32 and Path-X the budget is that of S4's published Pathfinder model, 6 layers of
width 256, built in this library's backbone. ``tests/train/test_presets.py`` builds every
preset and checks it against its budget.
"""

from __future__ import annotations

import copy
from typing import Any

from longarena.config import ConfigError

#: LRA task short name -> (registry name, task config overlay)
TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "listops": ("listops", {}),
    "text": ("lra_text", {"data_dir": "data/lra/imdb"}),
    "retrieval": ("lra_retrieval", {"data_dir": "data/lra/aan"}),
    "image": ("lra_image", {"data_dir": "data/lra/cifar10"}),
    "pathfinder32": ("pathfinder32", {}),
    "pathx": ("pathx", {}),
}

#: sequence length of each task (what length-bound mixers are sized for)
SEQ_LEN = {"listops": 2000, "text": 4096, "retrieval": 4000, "image": 1024, "pathfinder32": 1024, "pathx": 16384}

#: training examples per epoch (LRA splits), to turn epochs into steps
TRAIN_EXAMPLES = {"listops": 96_000, "text": 25_000, "retrieval": 147_086, "image": 45_000, "pathfinder32": 160_000, "pathx": 160_000}

_M = 1_000_000
BUDGETS: dict[str, int] = {
    "listops": 20 * _M,
    "text": 3_500_000,
    "retrieval": 1_300_000,
    "image": 4_500_000,
    "pathfinder32": 4_500_000,
    "pathx": 4_500_000,
}

#: the shape every family shares on a task (a fair comparison), and the optimiser schedule
SHAPES: dict[str, dict[str, Any]] = {
    "listops": {"d_model": 256, "n_layers": 6, "dropout": 0.0},
    "text": {"d_model": 256, "n_layers": 4, "dropout": 0.1},
    "retrieval": {"d_model": 128, "n_layers": 4, "dropout": 0.1},
    "image": {"d_model": 256, "n_layers": 6, "dropout": 0.1},
    "pathfinder32": {"d_model": 256, "n_layers": 6, "dropout": 0.0},
    "pathx": {"d_model": 256, "n_layers": 6, "dropout": 0.0},
}
TRAIN: dict[str, dict[str, Any]] = {
    "listops": {"batch_size": 32, "lr": 1e-3, "weight_decay": 0.05, "epochs": 40, "warmup_fraction": 0.1},
    "text": {"batch_size": 32, "lr": 1e-3, "weight_decay": 0.05, "epochs": 32, "warmup_fraction": 0.1},
    "retrieval": {"batch_size": 32, "lr": 1e-3, "weight_decay": 0.05, "epochs": 20, "warmup_fraction": 0.1},
    "image": {"batch_size": 64, "lr": 1e-3, "weight_decay": 0.05, "epochs": 200, "warmup_fraction": 0.05},
    "pathfinder32": {"batch_size": 64, "lr": 1e-3, "weight_decay": 0.05, "epochs": 200, "warmup_fraction": 0.05},
    # 4 micro-batches of 8: at 16,384 tokens a whole batch of 32 ran Performer, BigBird and
    # Longformer (6 x 192-224, bf16) out of an H100's 80 GB; accumulation keeps the updates
    "pathx": {"batch_size": 32, "lr": 5e-4, "weight_decay": 0.05, "epochs": 50, "warmup_fraction": 0.05, "grad_accum": 4},
}

#: family -> registry mixer name; the families of the survey
FAMILIES: dict[str, str] = {
    "attention": "attention",
    "s4": "s4",
    "s5": "s5",
    "mamba": "mamba",
    "performer": "performer",
    "linformer": "linformer",
    "nystromformer": "nystromformer",
    "longformer": "longformer",
    "bigbird": "bigbird",
    "retnet": "retnet",
    "mega": "mega",
    "hyena": "hyena",
}
ALIASES = {"transformer": "attention"}

#: narrower widths where a family's mixer costs more than attention's at the task's width:
#: the widest multiple of 32 that fits the budget (found by building each model)
NARROWER: dict[tuple[str, str], int] = {
    **{("text", f): 224 for f in ("mamba", "longformer", "retnet", "mega")},
    **{(t, f): 224 for t in ("image", "pathfinder32", "pathx") for f in ("attention", "performer", "linformer", "nystromformer", "bigbird", "hyena")},
    **{(t, f): 192 for t in ("image", "pathfinder32", "pathx") for f in ("mamba", "longformer", "retnet", "mega")},
    ("pathx", "linformer"): 192,
}
#: Linformer's length projections cost max_len x proj_len per layer (one shared by K and V)
LINFORMER_PROJ = {"listops": 256, "text": 16, "retrieval": 16, "image": 128, "pathfinder32": 128, "pathx": 16}

#: learning rate of the state-space parameters in the S4 experiment files (``lr: 0.001``)
SSM_LR = 0.001

#: Pathfinder's read-out. The experiment file reads the last position (``decoder: mode:
#: last``); with this library's S4D and Pathfinder generator that stayed at chance on an H100
#: (test 0.521 after 15,000 steps of 64, the file's settings otherwise), where the mean, all
#: else equal, reached 0.964 test in 8,000 steps (docs/training.md, Measured figures).
S4_PATHFINDER_READOUT = "mean"
#: where a preset departs from its S4 experiment file (said in its summary)
S4_DEPARTURES = {"pathfinder32": f"read-out {S4_PATHFINDER_READOUT}, the file's is the last position"}

#: published S4 settings (state-spaces/s4, configs/experiment/lra/s4-lra-listops.yaml and
#: s4-lra-pathfinder.yaml, the HTTYH versions): width, depth, state size, batch, learning
#: rate, weight decay, warm-up, epochs, the read-out (mean pooling; on Pathfinder see
#: ``S4_PATHFINDER_READOUT``) and the block: BatchNorm (post-norm on ListOps, pre-norm on
#: Pathfinder), the layer's GLU output and no MLP; Pathfinder's pixels enter as intensities
#: through a linear encoder (``tokenize: false`` in the S4 data pipeline). ListOps's
#: warm-up is the scheduler file's default, 1000 steps.
S4_PAPER: dict[str, dict[str, Any]] = {
    "listops": {
        "model": {"d_model": 128, "n_layers": 8, "dropout": 0.0, "pooling": "mean", "norm": "batch",
                  "prenorm": False, "mlp": False, "mixer": {"s4": {"d_state": 64, "output": "glu"}}},
        "train": {"batch_size": 50, "lr": 0.01, "weight_decay": 0.05, "epochs": 40, "warmup_steps": 1000},
    },
    "pathfinder32": {
        "model": {"d_model": 256, "n_layers": 6, "dropout": 0.0, "pooling": S4_PATHFINDER_READOUT, "norm": "batch",
                  "prenorm": True, "mlp": False, "input_encoding": "scalar",
                  "mixer": {"s4": {"d_state": 64, "output": "glu"}}},
        "train": {"batch_size": 64, "lr": 0.004, "weight_decay": 0.03, "epochs": 200, "warmup_steps": 2500},
    },
}


#: the fields of S4's published block, which S4 keeps in the shared shape (``shared``) too
S4_BLOCK = ("norm", "prenorm", "mlp", "input_encoding")


def _mixer_overrides(family: str, task: str) -> dict[str, Any]:
    """Per-family settings: bidirectional where the mixer has it (LRA is classification),
    sequence-length bounds sized to the task, head counts that divide the width."""
    T = SEQ_LEN[task]
    heads = 8 if NARROWER.get((task, family), SHAPES[task]["d_model"]) >= 192 else 4
    return {
        "attention": {"causal": False, "n_heads": heads},
        "s4": {"causal": False, "d_state": 64},
        "s5": {"causal": False, "d_state": 64},
        "mamba": {"d_state": 16},
        "performer": {"causal": False, "n_heads": heads, "n_features": 128},
        "linformer": {"n_heads": heads, "max_len": T, "proj_len": LINFORMER_PROJ[task], "sharing": "kv"},
        "nystromformer": {"n_heads": heads, "n_landmarks": 64},
        "longformer": {"n_heads": heads, "window": 128, "block_size": 64},
        "bigbird": {"n_heads": heads, "block_size": 64},
        "retnet": {"n_heads": heads},
        "mega": {"ndim": 16, "chunk_size": 128 if T > 2048 else None},
        "hyena": {"max_len": T},
    }[family]


def _train_section(task: str, settings: dict[str, Any]) -> dict[str, Any]:
    batch = settings["batch_size"]
    steps = settings["epochs"] * TRAIN_EXAMPLES[task] // batch
    warmup = settings.get("warmup_steps") or int(steps * settings["warmup_fraction"])
    accum = settings.get("grad_accum", 1)
    section = {
        "steps": steps, "batch_size": batch, "lr": settings["lr"], "weight_decay": settings["weight_decay"],
        "warmup": warmup, "grad_clip": 1.0, "eval_every": max(1, TRAIN_EXAMPLES[task] // batch),
        "eval_batches": 32, "test_batches": None, "checkpoint_every": 1000, "precision": "bf16",
    }
    if accum > 1:  # evaluation batches no larger than a training micro-batch either
        section.update(grad_accum=accum, eval_batch_size=batch // accum, eval_batches=32 * accum)
    return section


def _build(task: str, family: str, paper_settings: bool = True) -> dict[str, Any]:
    """The preset of ``family`` on ``task``; ``paper_settings=False`` gives S4 the shape and
    schedule every family shares on the task (what a controlled comparison trains)."""
    registry, task_config = TASKS[task]
    mixer = FAMILIES[family]
    model = {**SHAPES[task], "pattern": [mixer], "mixer": {mixer: _mixer_overrides(family, task)}}
    model["d_model"] = NARROWER.get((task, family), model["d_model"])
    train_settings = TRAIN[task]
    paper = S4_PAPER.get(task) if family == "s4" else None
    if paper is not None and paper_settings:
        model = {**model, **{k: v for k, v in paper["model"].items() if k != "mixer"}}
        model["mixer"] = {"s4": {**model["mixer"]["s4"], **paper["model"]["mixer"]["s4"]}}
        train_settings = paper["train"]
    elif paper is not None:
        # the shared shape and schedule, in S4's own block: in the default pre-norm RMSNorm
        # block S4 stays at the label marginal on ListOps (docs/training.md, Measured figures)
        model.update({k: paper["model"][k] for k in S4_BLOCK if k in paper["model"]})
        model["mixer"] = {"s4": {**model["mixer"]["s4"], "output": paper["model"]["mixer"]["s4"]["output"]}}
    train = _train_section(task, train_settings)
    if family in ("s4", "s5"):
        train["ssm_lr"] = SSM_LR  # S4's A, B, dt learning rate (S5 uses the same)
    return {"task": registry, "task_config": dict(task_config), "model": model, "train": train}


PRESETS: dict[str, dict[str, Any]] = {
    f"lra/{task}/{family}": _build(task, family) for task in TASKS for family in FAMILIES
}


def shared(task: str, family: str) -> dict[str, Any]:
    """Run-config overlay of ``family`` on LRA ``task`` in the task's shared shape and
    schedule (for S4 too, in its published block; its ``lra/<task>/s4`` preset may follow
    the paper's shape and schedule as well)."""
    if task not in TASKS or family not in FAMILIES:
        raise ConfigError(f"no LRA setting for task {task!r} / family {family!r}; tasks: {', '.join(TASKS)}; families: {', '.join(FAMILIES)}")
    return _build(task, family, paper_settings=False)


def names() -> list[str]:
    return sorted(PRESETS)


def get(name: str) -> dict[str, Any]:
    """The run-config overlay of preset ``name`` (a fresh copy)."""
    parts = name.split("/")
    if len(parts) == 3 and parts[2] in ALIASES:
        name = "/".join(parts[:2] + [ALIASES[parts[2]]])
    if name not in PRESETS:
        prefix = "/".join(parts[:2])
        near = [n for n in names() if n.startswith(prefix + "/")] or names()
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(near)} (longarena train --list-presets)")
    return copy.deepcopy(PRESETS[name])


def summaries() -> dict[str, str]:
    out = {}
    for name in names():
        p = PRESETS[name]
        m, t = p["model"], p["train"]
        task = name.split("/")[1]
        source = ""
        if task in S4_PAPER and name.endswith("/s4"):
            source = " (S4 paper config" + (f"; {S4_DEPARTURES[task]}" if task in S4_DEPARTURES else "") + ")"
        out[name] = (
            f"{p['task']}: {m['n_layers']} x {m['d_model']} {m['pattern'][0]}, batch {t['batch_size']}, "
            f"lr {t['lr']:g}, {t['steps']:,} steps{source}"
        )
    return out
