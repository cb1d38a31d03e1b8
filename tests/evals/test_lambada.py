"""LAMBADA on a fixture file: accuracy and per-word perplexity against explicit forwards."""

from __future__ import annotations

import json
import math
from typing import ClassVar

import pytest
import torch

from longarena.evals import lambada
from longarena.evals.adapter import Adapter, EvalError, LongArenaAdapter

PASSAGES = [
    "She poured the tea and handed him the cup",
    "He looked at the river and thought of the sea",
    "«Où est la gare?» demanda-t-elle à l'homme",
    "a b",
]


def _write(tmp_path, texts):
    path = tmp_path / "lambada_test.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n\n")
    return path


def test_lambada_metrics_by_hand(tiny_longarena, tmp_path):
    path = _write(tmp_path, PASSAGES)
    adapter = LongArenaAdapter(tiny_longarena)
    res = lambada.evaluate(adapter, path)
    logps, hits = [], []
    for text in PASSAGES:
        ctx, word = text.rsplit(" ", 1)
        c, w = list(ctx.encode()), list((" " + word).encode())  # bytes: the word includes its space
        x = torch.tensor([c + w])
        with torch.no_grad():
            logits = tiny_longarena(x).logits[0, len(c) - 1 : -1].float()
        logp = torch.log_softmax(logits, -1)[torch.arange(len(w)), torch.tensor(w)].sum()
        logps.append(float(logp))
        hits.append(logits.argmax(-1).tolist() == w)
    assert [r["target"] for r in res.rows] == ["cup", "sea", "l'homme", "b"]
    assert [r["correct"] for r in res.rows] == hits
    assert res.accuracy == pytest.approx(sum(hits) / 4)
    assert res.perplexity == pytest.approx(math.exp(-sum(logps) / 4), rel=1e-5)
    out = res.save(tmp_path)
    assert json.loads(out["json"].read_text())["n"] == 4


class Bigram(Adapter):
    """Bytes; logit 10 for the successor of the previous byte in a fixed table, 0 for every other byte."""

    name = "bigram"
    vocab_size = 256
    device = torch.device("cpu")
    table: ClassVar[dict[int, int]] = {
        ord("o"): ord(" "),
        ord(" "): ord("g"),
        ord("g"): ord("h"),
        ord("h"): ord("i"),
    }

    def encode(self, text, *, special=True):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode()

    def _hidden(self, ids):
        return torch.nn.functional.one_hot(ids, 256).float()

    def _head(self, h):
        succ = torch.zeros(256, 256)
        for a, b in self.table.items():
            succ[a, b] = 10.0
        return h @ succ

    generate_ids = attention_maps = None


def test_lambada_accuracy_and_perplexity_with_a_known_bigram_model(tmp_path):
    res = lambada.evaluate(Bigram(), _write(tmp_path, ["go to ghi", "to go hig"]))
    # passage 1: " ghi" after "o": every byte is the successor -> greedy, log p = 4 (10 - log Z)
    # passage 2: " hig" after "o": " " ok, "h" after " " (wants g) wrong: -log Z, "i" after "h" ok,
    # "g" after "i" (no entry: uniform row) -log 256
    log_z = math.log(math.exp(10) + 255)
    ll1, ll2 = 4 * (10 - log_z), 2 * (10 - log_z) - log_z - math.log(256)
    assert [r["correct"] for r in res.rows] == [True, False]
    assert res.accuracy == 0.5
    assert res.perplexity == pytest.approx(math.exp(-(ll1 + ll2) / 2), rel=1e-5)


def test_lambada_bad_files(tmp_path):
    with pytest.raises(EvalError, match="LAMBADA file not found"):
        lambada.load(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "x y"}\n')
    with pytest.raises(EvalError, match="bad.jsonl:1"):
        lambada.load(bad)
    bad.write_text('{"text": "single"}\n')
    with pytest.raises(EvalError, match="two words"):
        lambada.load(bad)
    assert len(lambada.load(_write(tmp_path, PASSAGES), limit=2)) == 2
