"""LAMBADA (Paperno et al. 2016): predict the last word of a passage that needs the whole passage.

Input: the official JSONL format (one ``{"text": "..."}`` per line, as in OpenAI's
``lambada_test.jsonl``) from a local file. The target is the text after the last space;
the model sees everything before it.

Metrics (the standard ones, as lm-evaluation-harness reports them):

- ``accuracy``: the whole last word is the greedy continuation, i.e. every one of its
  tokens is the argmax given the passage and the word's earlier tokens;
- ``perplexity``: ``exp(-mean log p(word | passage))`` over passages, a per-word perplexity
  (the log-likelihood of all the word's tokens together).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from longarena.evals.adapter import Adapter, EvalError
from longarena.evals.common import Progress, require_file, tick, write_json


def load(path: str | os.PathLike, limit: int | None = None) -> list[tuple[str, str]]:
    """(context, " last_word") pairs from a LAMBADA JSONL file."""
    path = require_file(
        path, "LAMBADA file", 'give the path of lambada_test.jsonl (one {"text": ...} per line)'
    )
    out = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise EvalError(f"{path}:{line_no}: expected a JSON object with a 'text' field") from exc
            context, sep, word = text.strip().rpartition(" ")
            if not sep or not context or not word:
                raise EvalError(f"{path}:{line_no}: the passage needs at least two words")
            out.append((context, " " + word))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise EvalError(f"{path} holds no passages")
    return out


@dataclasses.dataclass
class LambadaResult:
    model: dict[str, Any]
    accuracy: float
    perplexity: float
    rows: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "eval": "lambada",
            "model": self.model,
            "accuracy": self.accuracy,
            "perplexity": self.perplexity,
            "n": len(self.rows),
            "rows": self.rows,
        }

    def save(self, folder: str | os.PathLike, name: str = "lambada") -> dict[str, Path]:
        return {"json": write_json(self.to_dict(), Path(folder) / f"{name}.json")}


def evaluate(
    adapter: Adapter, path: str | os.PathLike, limit: int | None = None, progress: Progress = None
) -> LambadaResult:
    pairs = load(path, limit)
    rows = []
    for i, (context, word) in enumerate(pairs):
        tick(progress, i, len(pairs), "lambada")
        s = adapter.score(context, word)
        rows.append(
            {"target": word.strip(), "logprob": s.logprob, "tokens": s.n_tokens, "correct": s.is_greedy}
        )
    tick(progress, len(pairs), len(pairs), "lambada")
    accuracy = sum(r["correct"] for r in rows) / len(rows)
    perplexity = math.exp(-sum(r["logprob"] for r in rows) / len(rows))
    return LambadaResult(adapter.describe(), accuracy, perplexity, rows)
