"""Long-context probes: budgets met with a real subword tokenizer, evidence at the asked
depth and at sentence boundaries, answers recoverable from the prompt, seeded, errors."""

from __future__ import annotations

import json
import random
import re

import pytest

from longarena.config import ConfigError
from longarena.tasks import probes


@pytest.fixture(scope="module")
def bpe():
    """A small byte-level BPE trained on the filler: subword counts like a real LLM tokenizer."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["[UNK]"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    nxt = probes._sentences(random.Random(0), "prose")
    tok.train_from_iterator([nxt() for _ in range(1500)] + [probes._REPEAT] * 10, trainer)
    return tok


def _haystack(p: probes.Probe) -> str:
    return p.prompt.split("\n\n")[1]


@pytest.mark.parametrize("budget", [1000, 4000])
@pytest.mark.parametrize("depth", [0.0, 0.35, 1.0])
def test_needle_fits_budget_and_sits_at_depth(bpe, budget, depth):
    p = probes.make_needle(budget, depth, seed=3, tokenizer=bpe)
    count = probes.token_counter(bpe)
    assert count(p.prompt) == p.tokens and budget - 4 <= p.tokens <= budget
    hay = _haystack(p)
    needle = p.metadata["needle"]
    at = hay.index(needle)
    before, after = hay[:at].strip(), hay[at + len(needle) :].strip()
    # inserted between sentences
    assert before == "" or before.endswith(".")
    plain = f"{before} {after}".strip()
    measured = count(before) / count(plain)
    assert abs(measured - depth) < 0.02 and abs(p.depth - measured) < 0.01
    assert p.answers[0] in needle and p.score(f"It is {p.answers[0]}.") == 1.0 and p.score("no idea") == 0.0


def test_passkey_is_seeded_and_in_the_prompt():
    a = probes.make_passkey(500, 0.5, seed=7)
    b = probes.make_passkey(500, 0.5, seed=7)
    c = probes.make_passkey(500, 0.5, seed=8)
    assert a == b and a.prompt != c.prompt
    assert re.fullmatch(r"\d{5}", a.answer)
    assert a.prompt.count(a.answer) == 2 and a.tokens <= 500 and a.tokens >= 495
    assert a.prompt.rstrip().endswith("The pass key is")


def test_multikey_asks_one_key_among_distractors(bpe):
    p = probes.make_multikey(1500, 0.5, num_keys=4, seed=1, tokenizer=bpe)
    hay = _haystack(p)
    found = dict(re.findall(r"special number for ([\w-]+) is (\d+)\.", hay))
    asked = re.search(r"given for ([\w-]+) in the text above\?", p.prompt).group(1)
    assert asked == p.metadata["key"]
    assert (
        len(found) == 4
        and found[asked] == p.answer
        and set(p.metadata["distractor_keys"]) == set(found) - {asked}
    )
    assert 1500 - 6 <= p.tokens <= 1500


def test_multivalue_returns_every_value_in_the_text():
    p = probes.make_multivalue(800, 0.2, num_values=3, seed=2)
    hay = _haystack(p)
    key = re.search(r"given for ([\w-]+) in the text above\.", p.prompt).group(1)
    assert key == p.metadata["key"]
    assert sorted(re.findall(rf"for {re.escape(key)} is (\d+)\.", hay)) == sorted(p.answers)
    assert p.score(" ".join(p.answers[:2])) == pytest.approx(2 / 3)


def test_variable_tracking_chain_resolves_to_the_answer():
    p = probes.make_variable_tracking(600, num_hops=3, seed=5)
    assigns = re.findall(r"VAR (\w+) = (\w+)\.", _haystack(p))
    value = p.metadata["value"]
    holds: set[str] = set()
    for name, rhs in assigns:  # replay the program in text order
        if rhs == value or rhs in holds:
            holds.add(name)
    assert sorted(holds) == sorted(p.answers) and len(holds) == 4


@pytest.mark.parametrize("gold", [0, 4, 9])
def test_kv_retrieval_gold_position(gold):
    p = probes.make_kv_retrieval(10, gold, seed=0)
    body = p.prompt.split("JSON data:\n")[1].split("\n\nKey:")[0]
    data = json.loads(body)
    keys = list(data)
    assert keys[gold] == p.metadata["key"] and data[keys[gold]] == p.answer
    assert len(set(keys)) == 10 and p.prompt.count(p.answer) == 1


def test_grid_and_bad_input():
    g = probes.grid("passkey", [200, 400], [0.0, 1.0], seed=1)
    assert len(g) == 4 and len({x.answer for x in g}) == 4
    assert [x.tokens <= L for x, L in zip(g, (200, 200, 400, 400))] == [True] * 4
    with pytest.raises(ConfigError, match="depth must be in \\[0, 1\\]"):
        probes.make_needle(500, 1.5)
    with pytest.raises(ConfigError, match="cannot hold even the probe's template"):
        probes.make_passkey(10, 0.5)
    with pytest.raises(ConfigError, match="0 <= gold_index < num_pairs"):
        probes.make_kv_retrieval(5, 5)
    with pytest.raises(ConfigError, match="together"):
        probes.make_needle(500, 0.5, needle="The cat is blue.")
    with pytest.raises(ConfigError, match="filler must be"):
        probes.make_needle(500, 0.5, filler="essays")
    with pytest.raises(TypeError, match="tokenizer must be"):
        probes.make_needle(500, 0.5, tokenizer=3)


def test_custom_needle_and_counter_function():
    p = probes.make_needle(
        300,
        0.5,
        seed=0,
        tokenizer=lambda s: s.split(),
        needle="The best thing to do in San Francisco is eat a sandwich.",
        question="What is the best thing to do in San Francisco?",
        answer="eat a sandwich",
    )
    assert 296 <= len(p.prompt.split()) == p.tokens <= 300 and "eat a sandwich" in p.prompt


def test_multiquery_asks_every_key(bpe):
    p = probes.make_multiquery(1200, 0.6, num_queries=3, seed=4, tokenizer=bpe)
    found = dict(re.findall(r"special number for ([\w-]+) is (\d+)\.", _haystack(p)))
    keys = p.metadata["keys"]
    assert len(keys) == 3 and all(k in p.prompt.split("\n\n")[-1] for k in keys)
    assert [found[k] for k in keys] == p.answers
    assert abs(p.depth - 0.6) < 0.05 and 1200 - 6 <= p.tokens <= 1200
    g = probes.grid("multiquery", [600], [0.0, 1.0], num_queries=2)
    assert [len(x.answers) for x in g] == [2, 2]
    g = probes.grid("multikey", [600], [0.5], num_keys=3)
    assert len(g[0].metadata["distractor_keys"]) == 2
