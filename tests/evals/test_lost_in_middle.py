"""Lost in the middle: position bookkeeping with oracle models of known position bias; QA fixture format."""

from __future__ import annotations

import gzip
import json
import re

import pytest
import torch

from longarena.evals import lost_in_middle as lim
from longarena.evals.adapter import Adapter, ByteTokenizer, EvalError


class Biased(Adapter):
    """Answers correctly only when the evidence is first or last (a caricature of the U curve)."""

    name = "biased"
    vocab_size = 256
    device = torch.device("cpu")

    def __init__(self):
        self.tok = ByteTokenizer()

    def encode(self, text, *, special=True):
        return self.tok.encode(text)

    def decode(self, ids):
        return self.tok.decode(ids)

    def _hidden(self, ids):
        raise NotImplementedError

    _head = attention_maps = _hidden

    def generate_ids(self, ids, max_new_tokens):
        text = self.decode(ids)
        pairs = re.findall(r'"([0-9a-f-]{36})": "([0-9a-f-]{36})"', text)
        if pairs:  # key-value retrieval: the key asked for is the last UUID of the prompt
            key = re.findall(r"[0-9a-f-]{36}", text)[-1]
            i = [k for k, _ in pairs].index(key)
            return self.encode(
                f'"{pairs[i][1]}"' if i in (0, len(pairs) - 1) else '"00000000-0000-4000-8000-000000000000"'
            )
        first = re.search(r"Document \[1\]\(Title: [^)]*\) (\S+)", text).group(1)
        return self.encode(f" {first}\nignored second line")


def test_spread_positions():
    assert lim.spread_positions(10) == [0, 2, 4, 7, 9]  # round(i*9/4) for i=0..4: 0, 2.25, 4.5, 6.75, 9
    assert lim.spread_positions(3) == [0, 1, 2]
    assert lim.spread_positions(20, 1) == [0]


def test_kv_accuracy_by_position(tmp_path):
    res = lim.run_kv(Biased(), num_pairs=(5, 10), samples=2)
    curves = res.curves()
    assert curves["5"] == {0: 1.0, 1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0}
    assert curves["10"] == {0: 1.0, 2: 0.0, 4: 0.0, 7: 0.0, 9: 1.0}
    paths = res.save(tmp_path)
    assert json.loads(paths["json"].read_text())["accuracy"]["5"]["4"] == 1.0
    assert paths["png"].stat().st_size > 1000
    with pytest.raises(EvalError, match="do not fit"):
        lim.run_kv(Biased(), num_pairs=(5,), positions=(5,))


def _qa_file(tmp_path, gz=False):
    examples = [
        {
            "question": "who wrote paradise lost",
            "answers": ["John Milton", "Milton"],
            "ctxs": [
                {"title": "Lear", "text": "Shakespeare wrote it.", "hasanswer": False, "isgold": False},
                {"title": "PL", "text": "Milton wrote Paradise Lost.", "hasanswer": True, "isgold": True},
                {"title": "Comus", "text": "A masque.", "hasanswer": False, "isgold": False},
                {"title": "Hamlet", "text": "Denmark.", "hasanswer": False, "isgold": False},
            ],
        },
        {
            "question": "capital of france",
            "answers": ["Paris"],
            "ctxs": [
                {"title": "Rome", "text": "Rome is in Italy.", "hasanswer": False},
                {"title": "Berlin", "text": "Berlin is in Germany.", "hasanswer": False},
                {"title": "France", "text": "Paris is the capital.", "hasanswer": True},
            ],
        },
    ]
    path = tmp_path / ("qa.jsonl.gz" if gz else "qa.jsonl")
    data = "\n".join(json.dumps(e) for e in examples) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(data)
    else:
        path.write_text(data)
    return path, examples


def test_arrange_moves_gold_and_keeps_distractor_order(tmp_path):
    _, (ex, ex2) = _qa_file(tmp_path)
    assert [d["title"] for d in lim.arrange(ex, 0)] == ["PL", "Lear", "Comus", "Hamlet"]
    assert [d["title"] for d in lim.arrange(ex, 3)] == ["Lear", "Comus", "Hamlet", "PL"]
    assert [d["title"] for d in lim.arrange(ex, 1, n_docs=3)] == ["Lear", "PL", "Comus"]
    assert [d["title"] for d in lim.arrange(ex2, 0)] == [
        "France",
        "Rome",
        "Berlin",
    ]  # hasanswer when no isgold
    with pytest.raises(EvalError, match="does not fit"):
        lim.arrange(ex, 4)


@pytest.mark.parametrize("gz", [False, True])
def test_multidoc_qa_primacy_oracle(tmp_path, gz):
    path, _ = _qa_file(tmp_path, gz)
    res = lim.run_qa(Biased(), path, positions=(0, 1, 2), n_docs=3)
    # the oracle repeats the first word of document 1: right ("Milton", "Paris") only with the gold first
    assert res.curves() == {"3": {0: 1.0, 1: 0.0, 2: 0.0}}
    assert all(r["output"].startswith(" ") for r in res.rows)


def test_qa_file_errors(tmp_path):
    with pytest.raises(EvalError, match="not found"):
        lim.load_qa(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(EvalError, match=r"bad.jsonl:1: missing field"):
        lim.load_qa(bad)
    bad.write_text("not json\n")
    with pytest.raises(EvalError, match="not JSON"):
        lim.load_qa(bad)
