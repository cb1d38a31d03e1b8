"""Induction scores: a hand-built perfect copier, explicit forwards of tiny models, bookkeeping by hand."""

from __future__ import annotations

import math

import pytest
import torch

from longarena import models
from longarena.evals import induction as ind
from longarena.evals.adapter import Adapter, EvalError, LongArenaAdapter


class Copier(Adapter):
    """A perfect induction model over 256 tokens: predicts the token that followed the last
    earlier occurrence of the current token (logit 5), uniform when there is none. Its two
    'heads': head 0 attends to that induction target, head 1 uniformly over the past."""

    name = "copier"
    vocab_size = 256
    device = torch.device("cpu")

    def encode(self, text, *, special=True):
        return [255] if special else []  # a one-token "BOS" prefix

    def decode(self, ids):
        return ""

    def _targets(self, ids):
        out = []
        for t, tok in enumerate(ids):
            prev = [j for j in range(t) if ids[j] == tok]
            out.append(prev[-1] + 1 if prev else None)
        return out

    def _hidden(self, x):
        ids = x[0].tolist()
        h = torch.zeros(1, len(ids), 256)
        for t, j in enumerate(self._targets(ids)):
            if j is not None:
                h[0, t, ids[j]] = 1.0
        return h

    def _head(self, h):
        return 5.0 * h

    def generate_ids(self, ids, max_new_tokens):
        raise NotImplementedError

    def attention_maps(self, ids):
        t = len(ids)
        maps = torch.zeros(1, 2, t, t)
        for q, j in enumerate(self._targets(ids)):
            maps[0, 0, q, j if j is not None else q] = 1.0
            maps[0, 1, q, : q + 1] = 1.0 / (q + 1)
        return maps


def test_perfect_copier_scores(tmp_path):
    config = ind.InductionConfig(seq_len=12, batch=2, seed=3, low=0, high=200)
    x = ind.repeated_sequences(config, 256, [255])
    assert x.shape == (2, 25) and torch.equal(x[:, 1:13], x[:, 13:])
    for row in x[:, 1:13]:
        assert len(set(row.tolist())) == 12, (
            "the test needs repeats without duplicates inside r; change the seed"
        )
    res = ind.evaluate(Copier(), config)
    # first copy: no earlier occurrence -> uniform logits -> loss log 256 exactly
    assert res.loss_first == pytest.approx(math.log(256), rel=1e-6)
    # second copy: logit 5 on the right token among 256 -> loss log(e^5 + 255) - 5
    assert res.loss_repeat == pytest.approx(math.log(math.exp(5) + 255) - 5, rel=1e-5)
    assert res.copy_accuracy == 1.0
    # head 0 is a perfect induction head; head 1 is uniform: query 1 + 12 + i sees 14 + i positions
    uniform = sum(1 / (14 + i) for i in range(12)) / 12
    assert res.prefix_matching[0][0] == pytest.approx(1.0)
    assert res.prefix_matching[0][1] == pytest.approx(uniform)
    assert res.top_heads(1) == [(0, 0, pytest.approx(1.0))]
    paths = res.save(tmp_path)
    assert paths["png"].stat().st_size > 1000


def test_prefix_matching_indexing_by_hand():
    # one layer, one head, offset 1, seq_len 2: T = 5; queries 3 and 4 have targets 2 and 3
    maps = torch.zeros(1, 1, 5, 5)
    maps[0, 0, 3, 2] = 0.5
    maps[0, 0, 4, 3] = 0.25
    assert ind.prefix_matching(maps, 1, 2).item() == pytest.approx(0.375)


def test_losses_match_explicit_forwards_on_a_tiny_longarena_lm(tiny_longarena):
    a = LongArenaAdapter(tiny_longarena)
    config = ind.InductionConfig(seq_len=10, batch=2, prefix=False)
    res = ind.evaluate(a, config)
    x = ind.repeated_sequences(config, 256)
    with torch.no_grad():
        logits = tiny_longarena(x).logits.float()  # (B, 20, V)
    nll = -torch.log_softmax(logits[:, :-1], -1).gather(2, x[:, 1:, None])[..., 0]  # (B, 19)
    assert res.loss_first == pytest.approx(float(nll[:, :9].mean()), rel=1e-5)
    # positions 11..19 hold r[1..9] again (position 10, r[0], cannot be inferred)
    assert res.loss_repeat == pytest.approx(float(nll[:, 10:].mean()), rel=1e-5)
    acc = (logits[:, 10:-1].argmax(-1) == x[:, 11:]).float().mean(1).mean()
    assert res.copy_accuracy == pytest.approx(float(acc))
    assert len(res.prefix_matching) == 2 and len(res.prefix_matching[0]) == 4


def test_models_without_attention_get_loss_scores_only(tmp_path):
    torch.manual_seed(0)
    lm = models.get("lm", vocab_size=256, d_model=16, n_layers=1, pattern=("retnet",)).eval()
    res = ind.evaluate(LongArenaAdapter(lm), seq_len=6, batch=1, prefix=False)
    assert res.prefix_matching is None and "attention" in res.note
    assert "png" not in res.save(tmp_path)


def test_icl_score_by_hand(tiny_longarena):
    a = LongArenaAdapter(tiny_longarena)
    doc = list(range(40)) * 2
    losses = a.token_losses(doc[:31])
    assert ind.icl_score(a, [doc], late=30, early=5) == pytest.approx(float(losses[29] - losses[4]), rel=1e-6)
    with pytest.raises(EvalError, match="needs more than 500"):
        ind.icl_score(a, [doc])
    with pytest.raises(EvalError, match="early < late"):
        ind.icl_score(a, [doc], late=5, early=5)
