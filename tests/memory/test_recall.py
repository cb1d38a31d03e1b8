"""Training runs: memory models learn to carry a fact across segment boundaries (slow).

The fast tests cover the same code: gradients through memory (test_runner), the probe
(test_registry). Figures for all four models, memory on vs off: benchmarks/memory_recall.py.
"""

from __future__ import annotations

import pytest
import torch

import longarena.memory  # noqa: F401  (registers the memory models)
from longarena import models
from longarena.memory.runner import run_segments, train_segments
from longarena.tasks.segment_probes import FactRecallConfig, fact_recall


def _recall_accuracy(name: str, task: FactRecallConfig, steps: int, *, carry: bool = True, **config) -> float:
    torch.manual_seed(0)
    model = models.get(name, vocab_size=task.vocab_size, d_model=64, n_layers=2, n_heads=4,
                       segment_len=task.segment_len, **config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 20)
        ids, labels = fact_recall(task, 32, gen)
        optimizer.zero_grad(set_to_none=True)
        train_segments(model, ids, labels, bptt=None, carry=carry)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    ids, labels = fact_recall(task, 512, torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = run_segments(model.eval(), ids, carry=carry).logits[:, -1]
    return float((logits.argmax(-1) == labels[:, -1]).float().mean())


@pytest.mark.slow
def test_rmt_remembers_a_fact_across_four_segments():
    task = FactRecallConfig(n_segments=4, segment_len=8)
    assert _recall_accuracy("rmt", task, 300, num_mem_tokens=4) > 0.9  # chance 1/8


@pytest.mark.slow
def test_memory_off_stays_at_chance():
    task = FactRecallConfig(n_segments=3, segment_len=8)
    assert _recall_accuracy("memformer", task, 150, carry=False, n_slots=8) < 0.25
