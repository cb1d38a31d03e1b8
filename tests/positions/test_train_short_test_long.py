"""The train-short-test-long benchmark: its machinery (fast) and the ordering it shows (slow)."""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_short_test_long.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_short_test_long", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def settings(**changes):
    base = dict(
        train_len=32, multiples=[1, 4], schemes=["alibi", "rope", "sinusoidal"], zero_shot=[], steps=800,
        batch=16, lr=3e-3, vocab=32, d_model=32, layers=2, heads=2, eval_seqs=32, finetune_steps=0,
        finetune_points=1, finetune_multiple=4, seed=0, threads=1,
    )
    return argparse.Namespace(**{**base, **changes})


def test_language_and_optimal_perplexity(bench):
    lang = bench.TopicLanguage(vocab=8, topics=2, switch=0.0, seed=1)
    ids = lang.sample(4, 50, np.random.default_rng(0))
    assert ids.shape == (4, 50) and int(ids.max()) < 8
    # with no switches, the optimal predictor is the Bayes mixture over the topic fixed at the
    # start: -log((1/K) sum_k prod_t P_k(x_t | x_t-1)), summed here in closed form per sequence
    x = ids.numpy()
    log_lik = np.stack([np.log(lang.transitions[k, x[:, :-1], x[:, 1:]]).sum(-1) for k in range(2)])  # (K, B)
    mixture = np.logaddexp(log_lik[0], log_lik[1]) - np.log(2)
    assert lang.optimal_nll(ids) == pytest.approx(-mixture.sum() / (4 * 49), rel=1e-9)
    windows = bench.windows(torch.arange(17)[None], 4)
    assert windows.tolist() == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9, 10, 11, 12], [12, 13, 14, 15, 16]]
    with pytest.raises(ValueError, match="does not split"):
        bench.windows(torch.arange(17)[None], 5)


def test_benchmark_runs_end_to_end(bench, tmp_path):
    args = settings(train_len=8, multiples=[1, 2], schemes=["alibi", "rope", "sinusoidal"], zero_shot=["yarn", "linear"],
                    steps=3, batch=4, eval_seqs=2, finetune_steps=2, finetune_points=1, finetune_multiple=2, d_model=16)
    result = bench.run(args)
    assert set(result["ppl"]) == {"alibi", "rope", "sinusoidal", "rope+yarn", "rope+linear"}
    for ppl in result["ppl"].values():
        assert all(math.isfinite(v) and v > 1 for v in ppl.values())
    # factor 1 at the trained length: the zero-shot scalings are the RoPE model itself
    assert result["ppl"]["rope+linear"][8] == result["ppl"]["rope"][8]
    assert set(result["finetune"]) == {"length", "steps", "direct", "PI"}
    assert "| alibi |" in bench.table(result)
    bench.plot(result, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 0


@pytest.mark.slow
def test_alibi_extrapolates_while_rope_and_sinusoidal_degrade(bench):
    """The ALiBi paper's ordering, on a fixed seed: trained at 32, scored at 32 and 128."""
    ppl = bench.run(settings())["ppl"]
    ratio = {name: ppl[name][128] / ppl[name][32] for name in ppl}
    assert ratio["alibi"] < 1.05
    assert ratio["rope"] > 1.05 and ratio["sinusoidal"] > 1.5
    assert ppl["alibi"][128] < ppl["rope"][128] < ppl["sinusoidal"][128]
