"""A tiny suite and a fake study shared by the arena tests (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from longarena.arena import studies
from longarena.arena.suites import Cell, StudySpec, Suite


def _fake_study(config, out_dir: Path, progress: bool) -> studies.StudyResult:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, config["slope"]])
    fig.savefig(out_dir / "line.png", format="png")
    plt.close(fig)
    table = "| x | y |\n|---|---|\n| 1 | " + str(config["slope"]) + " |"
    import numpy as np

    # a numpy value in the data, as real studies produce: the cache and results.json must store it
    return studies.StudyResult("fake", "A fake study", {"slope": np.float32(config["slope"])}, ["line.png"],
                               "## Reading it\n\nThe line rises with **slope** `" + str(config["slope"]) + "`.\n\n" + table)


@pytest.fixture
def fake_study(monkeypatch):
    """Registers the study kind "fake" (and a failing "broken") for one test."""
    calls = []

    def fake(config, out_dir, progress):
        calls.append(dict(config))
        return _fake_study(config, out_dir, progress)

    def broken(config, out_dir, progress):
        raise RuntimeError("the broken study always fails")

    monkeypatch.setitem(studies.STUDIES, "fake", fake)
    monkeypatch.setitem(studies.STUDIES, "broken", broken)
    return calls


def tiny_suite(**changes) -> Suite:
    train = dict(steps=2, batch_size=8, warmup=1, eval_batches=1)
    fields = dict(
        name="tiny",
        description="Two mixers, two cells, two steps each.",
        cells=(
            Cell(task="associative_recall",
                 task_config=dict(vocab_size=16, num_pairs=2, num_queries=2, n_train=32, n_validation=16),
                 mixers=("attention", "s4d"), d_model=16, n_layers=1, mixer_overrides={"attention": {"n_heads": 2}},
                 train=train),
            Cell(task="majority", task_config=dict(num_classes=3, length=8, n_train=32, n_validation=16),
                 mixers=("attention", "s4d"), d_model=16, n_layers=1, mixer_overrides={"attention": {"n_heads": 2}},
                 models={"perceiver": {"n_latents": 4, "d_latent": 16, "n_latent_layers": 1}}, train=train),
        ),
        studies=(StudySpec("fake", {"slope": 2}), StudySpec("not_a_study", {}), StudySpec("broken", {}, title="Broken")),
    )
    fields.update(changes)
    return Suite(**fields)
