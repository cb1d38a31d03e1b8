"""The segment runner: truncated BPTT cuts gradients, MRBP equals full BPTT, generation and
perplexity agree with a segment-by-segment read, training memory is flat in segments."""

from __future__ import annotations

import pytest
import torch

import longarena.memory  # noqa: F401  (registers the memory models)
from longarena import models
from longarena.memory.runner import (
    SavedTensorMeter,
    generate,
    next_token_labels,
    perplexity,
    run_segments,
    segment_bounds,
    state_numel,
    train_mrbp,
    train_segments,
)
from longarena.tasks.base import IGNORE

V, S = 24, 4
SMALL = dict(vocab_size=V, d_model=16, n_layers=1, n_heads=2, segment_len=S)
RECURRENT = {"rmt": dict(num_mem_tokens=2, tie_embeddings=False), "memformer": dict(n_slots=3, tie_embeddings=False)}
ALL = {**RECURRENT, "transformer_xl": dict(mem_len=4), "compressive": dict(mem_len=4, cmem_len=4, compression="conv")}


def _model(name):
    torch.manual_seed(0)
    return models.get(name, **SMALL, **ALL[name])


def _ids(n_segments, batch=2, seed=0):
    return torch.randint(0, V, (batch, n_segments * S), generator=torch.Generator().manual_seed(seed))


def _last_segment_labels(ids):
    labels = next_token_labels(ids)
    labels[:, : ids.shape[1] - S] = IGNORE
    labels[:, -1] = ids[:, 0]
    return labels


def _embedding_grad_per_segment(model, ids, bptt):
    """|d loss(last segment) / d embedding of each segment's tokens|, through the carried state."""
    emb = model.embed
    captured = []

    def keep(_module, _inputs, out):
        out.retain_grad()
        captured.append(out)

    hook = emb.register_forward_hook(keep)
    try:
        run_segments(model, ids, _last_segment_labels(ids), bptt=bptt).loss.backward()
    finally:
        hook.remove()
    return [float(e.grad.abs().sum()) if e.grad is not None else 0.0 for e in captured]


@pytest.mark.parametrize("name", sorted(RECURRENT))
def test_gradient_reaches_earlier_segments_through_memory_until_truncated(name):
    model = _model(name)
    ids = _ids(4)
    full = _embedding_grad_per_segment(model, ids, bptt=None)
    assert all(g > 0 for g in full), full  # the last segment's loss reaches every earlier segment
    model.zero_grad()
    cut = _embedding_grad_per_segment(model, ids, bptt=2)
    assert cut[0] == 0.0 and cut[1] == 0.0, cut  # detached at the start of segment 2: exactly no gradient
    assert cut[2] > 0 and cut[3] > 0, cut
    torch.testing.assert_close(torch.tensor(cut[2:]), torch.tensor(full[2:]))


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("bptt", [1, 2, None])
def test_train_segments_gradient_equals_one_backward_through_the_truncated_graph(name, bptt):
    model = _model(name)
    ids = _ids(5)
    labels = next_token_labels(ids)
    loss = train_segments(model, ids, labels, bptt=bptt, aux_weight=0.0)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    run = run_segments(model, ids, labels, bptt=bptt)
    run.loss.backward()
    assert loss == pytest.approx(run.loss.item(), rel=1e-5)
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=1e-6, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", sorted(RECURRENT))
def test_memory_replay_backprop_equals_full_backprop(name):
    model = _model(name)
    ids = _ids(4)
    loss = train_mrbp(model, ids)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    assert train_segments(model, ids, bptt=None) == pytest.approx(loss, rel=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, atol=1e-6, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", sorted(ALL))
def test_training_memory_and_state_are_flat_in_the_number_of_segments(name):
    model = _model(name)
    peaks, sizes = [], []
    for n in (2, 4, 8):
        with SavedTensorMeter() as meter:
            train_segments(model, _ids(n), bptt=1)
        peaks.append(meter.peak)
        assert meter.live == 0  # every window's graph was freed
        sizes.append(state_numel(run_segments(model, _ids(n), keep_logits=False).state))
    assert peaks[1] == peaks[2], peaks  # flat once the memories are full
    assert sizes[1] == sizes[2], sizes
    with SavedTensorMeter() as meter:
        train_segments(model, _ids(8), bptt=None)
    assert meter.peak > 3 * peaks[2]  # without truncation the graph of every segment stays alive


@pytest.mark.parametrize("name", ["transformer_xl", "rmt", "memformer"])
def test_generation_matches_a_segment_by_segment_read(name):
    model = _model(name).eval()
    prompt = _ids(1, batch=2)[:, :3]
    out = generate(model, prompt, 2 * S + 3)
    with torch.no_grad():
        logits = run_segments(model, out).logits
    torch.testing.assert_close(logits[:, 2:-1].argmax(-1), out[:, 3:])


def test_perplexity_is_the_exp_of_the_mean_next_token_loss():
    model = _model("transformer_xl")
    ids = _ids(3)
    result = perplexity(model, ids)
    with torch.no_grad():
        logits = run_segments(model, ids).logits
    want = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert result["loss"] == pytest.approx(float(want), rel=1e-5)
    assert result["perplexity"] == pytest.approx(float(want.exp()), rel=1e-5)
    assert result["tokens"] == ids.numel() - ids.shape[0]


def test_the_generic_lm_runs_through_the_runner():
    torch.manual_seed(0)
    model = models.get("lm", vocab_size=V, d_model=16, n_layers=1, mixer={"attention": {"n_heads": 2}})
    ids = _ids(3)
    with torch.no_grad():
        whole = model(ids).logits
        chunked = run_segments(model, ids, segment_len=S).logits
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_bad_arguments():
    model = _model("rmt")
    with pytest.raises(ValueError, match="bptt"):
        train_segments(model, _ids(2), bptt=0)
    with pytest.raises(ValueError, match="segment_len"):
        segment_bounds(10, 0)
    with pytest.raises(ValueError, match="empty"):
        run_segments(model, torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="no config.segment_len"):
        run_segments(torch.nn.Identity(), _ids(1))
