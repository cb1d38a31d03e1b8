"""The four memory models are registered, round-trip through configs and checkpoints."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import longarena.memory  # noqa: F401  (registers the memory models)
from longarena import models
from longarena.constants import IGNORE
from longarena.memory.common import MemoryStateError
from longarena.memory.runner import run_segments
from longarena.models import checkpoint
from longarena.tasks.segment_probes import FactRecallConfig, fact_recall

NAMES = ["transformer_xl", "compressive", "rmt", "memformer"]


def test_names_are_registered():
    assert set(NAMES) <= set(models.names())


def test_names_are_listed_without_importing_memory_first():
    # a fresh interpreter: this one has imported longarena.memory above. models/ never imports
    # memory/, so only discovery (declared by the package root) can bring its models in
    code = (
        "import sys; from longarena import models; "
        "assert 'longarena.memory' not in sys.modules; "
        "print(' '.join(models.names()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert set(NAMES) <= set(out.split())


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = models.get(name, vocab_size=20, d_model=16, n_layers=1, n_heads=2, segment_len=4).eval()
    assert type(model.config).from_dict(model.config.to_dict()) == model.config
    loaded = checkpoint.load(checkpoint.save(model, tmp_path / name), expect=name).eval()
    ids = torch.randint(0, 20, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(run_segments(loaded, ids).logits, run_segments(model, ids).logits)


@pytest.mark.parametrize("name", NAMES)
def test_a_state_of_another_model_is_refused(name):
    model = models.get(name, vocab_size=20, d_model=16, n_layers=1, n_heads=2, segment_len=4)
    other = "rmt" if name != "rmt" else "memformer"
    state = models.get(other, vocab_size=20, d_model=16, n_layers=1, n_heads=2, segment_len=4)(torch.zeros(1, 4, dtype=torch.long)).state
    with pytest.raises(MemoryStateError, match="expects a"):
        model(torch.zeros(1, 4, dtype=torch.long), state=state)


def test_fact_recall_probe():
    config = FactRecallConfig(n_segments=4, segment_len=5, n_facts=3, n_filler=6)
    ids, labels = fact_recall(config, 64, torch.Generator().manual_seed(0))
    assert ids.shape == labels.shape == (64, 20)
    facts = ids < config.n_facts
    assert bool((facts.sum(1) == 1).all()) and not bool(facts[:, 5:].any())  # one fact, in segment 0
    assert bool((ids[:, -1] == config.vocab_size - 1).all())
    assert bool((labels[:, -1] == ids[facts]).all()) and bool((labels[:, :-1] == IGNORE).all())
    assert int(ids.max()) < config.vocab_size


def _pair(name, **overrides):
    built = []
    for backend in ("reference", "sdpa"):
        torch.manual_seed(0)
        built.append(models.get(name, vocab_size=20, d_model=16, n_layers=2, n_heads=2, segment_len=4, backend=backend, **overrides))
    return built


@pytest.mark.parametrize("name", NAMES)
def test_sdpa_equals_the_reference_backend_outputs_and_gradients(name):
    ref, fast = _pair(name)
    ids = torch.randint(0, 20, (2, 11))
    labels = torch.randint(0, 20, (2, 11))
    outs = []
    for model in (ref, fast):
        run = run_segments(model, ids, labels, bptt=None)
        run.loss.backward()
        outs.append(run.logits)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4)
    for (n, p), q in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_stays_close_to_fp32(name):
    ref, _ = _pair(name)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(std=0.3)  # logits of order 1, so the comparison is not vacuous
        ids = torch.randint(0, 20, (2, 11))
        want = run_segments(ref, ids).logits
        got = run_segments(ref.to(torch.bfloat16), ids).logits.float()
    assert bool(torch.isfinite(got).all())
    assert float((got - want).abs().max() / want.abs().max()) < 0.1
