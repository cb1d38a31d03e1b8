"""LongBench: fixture folder in the official format, scripted predictions, hand-computed task scores."""

from __future__ import annotations

import json

import pytest
import torch

from longarena.evals import longbench as lb
from longarena.evals.adapter import Adapter, ByteTokenizer, EvalError


class Scripted(Adapter):
    """Answers with the prediction whose marker (e.g. "<<q1>>") appears in the prompt; records prompts."""

    name = "scripted"
    vocab_size = 256
    device = torch.device("cpu")

    def __init__(self, answers, max_length=None):
        self.tok = ByteTokenizer()
        self.answers = answers
        self.max_length = max_length
        self.prompts = []

    def encode(self, text, *, special=True):
        return self.tok.encode(text)

    def decode(self, ids):
        return self.tok.decode(ids)

    def _hidden(self, ids):
        raise NotImplementedError

    _head = attention_maps = _hidden

    def generate_ids(self, ids, max_new_tokens):
        text = self.decode(ids)
        self.prompts.append(text)
        for marker, answer in self.answers.items():
            if marker in text:
                return self.encode(answer)
        return self.encode("no idea")


EXAMPLES = {
    "hotpotqa": [
        {"input": "Who wrote it? <<q1>>", "context": "doc", "answers": ["John Milton"], "_id": "h1"},
        {
            "input": "Where? <<q2>>",
            "context": "doc",
            "answers": ["London", "the City of London"],
            "_id": "h2",
        },
    ],
    "gov_report": [
        {"input": "", "context": "report <<g1>>", "answers": ["the budget was cut by congress"], "_id": "g1"}
    ],
    "trec": [
        {
            "input": "Q: what city? <<t1>>",
            "context": "examples",
            "answers": ["City"],
            "all_classes": ["City", "Country", "Other location"],
            "_id": "t1",
        }
    ],
    "passage_count": [{"input": "", "context": "P <<c1>>", "answers": ["7"], "_id": "c1"}],
    "passage_retrieval_en": [
        {"input": "summary <<r1>>", "context": "P", "answers": ["Paragraph 12"], "_id": "r1"}
    ],
    "lcc": [{"input": "", "context": "def f():\n <<l1>>", "answers": ["return x + 1"], "_id": "l1"}],
}
PREDICTIONS = {
    "<<q1>>": "Milton",  # F1: P=1/1, R=1/2 -> 2/3
    "<<q2>>": "in London town",  # vs "london": P=1/3,R=1 -> 0.5; vs "city of london" (articles gone): common 1, P=1/3,R=1/3 -> 1/3; best 0.5
    "<<g1>>": "congress cut the budget",  # ROUGE-L vs "the budget was cut by congress": LCS "the budget" =2 (or "cut"...):
    # pred [congress, cut, the, budget], ref [the, budget, was, cut, by, congress] -> LCS 2, P=2/4, R=2/6 -> 0.4
    "<<t1>>": "City\nCountry",  # first line only: "City" -> classes found [City] -> 1.0
    "<<c1>>": "7 or 8",  # numbers [7, 8] -> 1/2
    "<<r1>>": "Paragraph 12",  # -> 1.0
    "<<l1>>": "```\n    return x + 2",  # first code line "    return x + 2" vs "return x + 1": difflib ratio
}


def _folder(tmp_path):
    for task, rows in EXAMPLES.items():
        (tmp_path / f"{task}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "notes.jsonl").write_text("{}\n")  # not a task: ignored
    return tmp_path


def test_task_scores_by_hand(tmp_path):
    import difflib

    res = lb.evaluate(Scripted(PREDICTIONS), _folder(tmp_path))
    code = difflib.SequenceMatcher(None, "    return x + 2", "return x + 1").ratio()
    expected = {
        "gov_report": 40.0,
        "hotpotqa": 100 * (2 / 3 + 0.5) / 2,
        "lcc": 100 * code,
        "passage_count": 50.0,
        "passage_retrieval_en": 100.0,
        "trec": 100.0,
    }
    assert res.scores.keys() == expected.keys()
    for k, v in expected.items():
        assert res.scores[k] == pytest.approx(v), k
    table = {r["task"]: r for r in res.table()}
    assert table["hotpotqa"]["n"] == 2 and table["hotpotqa"]["metric"] == "qa_f1"
    data = json.loads(res.save(tmp_path / "out")["json"].read_text())
    assert data["average"] == pytest.approx(sum(expected.values()) / 6)


def test_truncate_middle_by_hand():
    assert lb.truncate_middle(list(range(10)), 4) == ([0, 1, 8, 9], True)
    assert lb.truncate_middle(list(range(10)), 5) == ([0, 1, 7, 8, 9], True)
    assert lb.truncate_middle([1, 2], 5) == ([1, 2], False)
    with pytest.raises(EvalError, match="at least 2"):
        lb.truncate_middle([1, 2, 3], 1)


def test_long_prompts_are_truncated_in_the_middle_and_flagged(tmp_path):
    rows = [{"input": "Q <<q1>>", "context": "x" * 500, "answers": ["Milton"], "_id": "a"}]
    (tmp_path / "hotpotqa.jsonl").write_text(json.dumps(rows[0]) + "\n")
    adapter = Scripted(PREDICTIONS, max_length=232)
    res = lb.evaluate(adapter, tmp_path, tasks=["hotpotqa"])
    (row,) = res.rows
    assert row["truncated"] and row["tokens"] == 232 - 32  # trained length minus hotpotqa's 32 new tokens
    prompt = adapter.prompts[0]
    assert prompt.startswith("Read the text below") and prompt.endswith("Q <<q1>>\nAnswer:")
    assert row["score"] == 1.0  # the question survived truncation: "Milton" vs "Milton"


def test_longbench_e_names_and_errors(tmp_path):
    assert lb.task_spec("hotpotqa_e") == lb.TASKS["hotpotqa"]
    with pytest.raises(EvalError, match="unknown LongBench task"):
        lb.task_spec("mmlu")
    with pytest.raises(EvalError, match="folder not found"):
        lb.load_task(tmp_path / "nope", "hotpotqa")
    (tmp_path / "qasper.jsonl").write_text("{}\n")
    with pytest.raises(EvalError, match="hotpotqa.jsonl is missing; the folder holds: qasper"):
        lb.load_task(tmp_path, "hotpotqa")
    with pytest.raises(EvalError, match="missing field"):
        lb.load_task(tmp_path, "qasper")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvalError, match="no LongBench task files"):
        lb.evaluate(Scripted({}), empty)
    # Chinese QA F1 by characters: pred 北京大学 vs ref 北京 -> 2/3
    assert lb.score_example("multifieldqa_zh", "北京大学", ["北京"]) == pytest.approx(2 / 3)
