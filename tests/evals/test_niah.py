"""NIAH / passkey grid logic with an oracle model whose context is known, and the heatmap conventions."""

from __future__ import annotations

import json
import re

import pytest
import torch

from longarena.config import ConfigError
from longarena.evals import niah
from longarena.evals.adapter import Adapter, ByteTokenizer, EvalError


class Oracle(Adapter):
    """Repeats the long numbers of the prompt when it fits its ``window`` of bytes, else says nothing useful."""

    def __init__(self, window: int, max_length: int | None = None) -> None:
        self.tok = ByteTokenizer()
        self.window = window
        self.max_length = max_length
        self.name = "oracle"

    def encode(self, text, *, special=True):
        return self.tok.encode(text)

    def decode(self, ids):
        return self.tok.decode(ids)

    vocab_size = 256
    device = torch.device("cpu")

    def _hidden(self, ids):
        raise NotImplementedError

    def _head(self, h):
        raise NotImplementedError

    def attention_maps(self, ids):
        raise NotImplementedError

    def generate_ids(self, ids, max_new_tokens):
        self.budgets = [*getattr(self, "budgets", []), max_new_tokens]
        if len(ids) > self.window:
            return self.encode(" I do not know.")
        # the haystacks hold no other long digit runs than the hidden key/number
        found = dict.fromkeys(re.findall(r"\d{5,}", self.decode(ids)))
        return self.encode(" " + " ".join(found) + ".")


@pytest.mark.parametrize("kind", ["passkey", "needle"])
def test_grid_scores_follow_the_oracle_window(kind, tmp_path):
    oracle = Oracle(window=1400)
    result = niah.run_grid(oracle, kind=kind, lengths=(400, 800, 2000), depths=(0.0, 0.5, 1.0))
    # the probes fit the lengths in the oracle's own tokens (bytes), so 400 and 800 fit, 2000 does not
    for c in result.cells:
        assert c["tokens"] <= c["length"] + 2
        assert c["score"] == (1.0 if c["length"] <= 1400 else 0.0)
    assert result.matrix() == [[1.0, 1.0, 0.0]] * 3
    assert result.by_length() == {400: 1.0, 800: 1.0, 2000: 0.0}
    paths = result.save(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["matrix"]["scores"] == result.matrix() and len(data["cells"]) == 9
    assert paths["png"].stat().st_size > 1000


def test_exact_match_mode_needs_the_answer_alone():
    assert niah.match_score(" 51815.\nmore", ["51815"], "exact") == 1.0
    assert niah.match_score("it is 51815", ["51815"], "exact") == 0.0
    assert niah.match_score("it is 51815", ["51815"], "substring") == 1.0
    assert niah.match_score("12 and 34", ["12", "34", "56"], "substring") == pytest.approx(2 / 3)


def test_beyond_trained_context_is_marked_or_refused():
    oracle = Oracle(window=10_000, max_length=600)
    with pytest.warns(UserWarning, match="trained context of 600"):
        result = niah.run_grid(oracle, kind="passkey", lengths=(400, 800), depths=(0.5,))
    assert [c["beyond_context"] for c in result.cells] == [False, True]
    assert [c["score"] for c in result.cells] == [1.0, 1.0]  # marked, never truncated
    with pytest.raises(EvalError, match="refusing"):
        niah.run_grid(oracle, kind="passkey", lengths=(800,), depths=(0.5,), on_too_long="refuse")


def test_heatmap_conventions():
    result = niah.GridResult(
        niah.GridConfig(lengths=(1024, 2048, 4096), depths=(0.0, 0.5, 1.0)),
        {"name": "m", "max_length": 2048},
        [{"length": n, "depth": d, "score": 0.5} for n in (1024, 2048, 4096) for d in (0.0, 0.5, 1.0)],
    )
    fig = niah.heatmap_figure(result)
    ax = fig.axes[0]
    assert ax.images[0].get_clim() == (0.0, 1.0)
    assert "depth" in ax.get_ylabel() and "length" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0%", "50%", "100%"]
    (line,) = ax.get_lines()
    assert line.get_linestyle() == "--" and list(line.get_xdata()) == [1.5, 1.5]  # between 2k and 4k
    assert list(niah.heatmap_figure(result, 4096).axes[0].get_lines()[0].get_xdata()) == [2.5, 2.5]
    assert list(niah.heatmap_figure(result, 512).axes[0].get_lines()[0].get_xdata()) == [-0.5, -0.5]
    short = niah.heatmap_figure(result, 8192).axes[0]  # the grid stops short of the trained length
    assert not short.get_lines() and "within the trained 8192" in short.get_title()


def test_bad_grid_configs():
    with pytest.raises(ConfigError, match="kind"):
        niah.GridConfig(kind="haystack")
    with pytest.raises(ConfigError, match="depths"):
        niah.GridConfig(depths=(1.5,))
    with pytest.raises(ConfigError, match="lengths"):
        niah.GridConfig(lengths=(0,))
    with pytest.raises(EvalError, match="on_too_long"):
        niah.GridConfig(on_too_long="truncate")


def test_generation_budget_fits_the_answers():
    oracle = Oracle(window=10_000)
    niah.run_grid(oracle, kind="passkey", lengths=(400,), depths=(0.5,))
    niah.run_grid(oracle, kind="multivalue", lengths=(800,), depths=(0.5,))
    niah.run_grid(oracle, kind="passkey", lengths=(400,), depths=(0.5,), max_new_tokens=3)
    # bytes: " 12345" is 6 tokens + 8 of slack; four 7-digit values " a, b, c, d" are 1 + 28 + 6 = 35, + 8
    assert oracle.budgets == [14, 43, 3]
