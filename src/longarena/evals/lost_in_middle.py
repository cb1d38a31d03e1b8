"""Lost in the Middle (Liu et al. 2023): accuracy as a function of where the evidence sits.

- Key-value retrieval: a JSON object of ``num_pairs`` UUID pairs (``longarena.tasks.probes.
  make_kv_retrieval``), the gold pair at each tested position; the model must return the
  gold key's value. Accuracy by position and by number of pairs.
- Multi-document QA on local data in the paper's JSONL format: one example per line,
  ``{"question": str, "answers": [str, ...], "ctxs": [{"title": str, "text": str,
  "isgold": bool, "hasanswer": bool}, ...]}`` (``.jsonl`` or ``.jsonl.gz``). The gold
  document (``isgold``, else the first with ``hasanswer``) is moved to each tested position
  among the distractors, which keep their order.

Scoring is the paper's: an answer is correct when any reference, normalised, occurs in
the normalised output (``metrics.substring_match``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from longarena.evals import metrics
from longarena.evals.adapter import Adapter, EvalError
from longarena.evals.common import (
    Progress,
    answer_budget,
    beyond_context,
    check_policy,
    read_jsonl,
    require_file,
    tick,
    write_json,
)
from longarena.plotting import pyplot, save_png
from longarena.tasks import probes


def spread_positions(n: int, count: int = 5) -> list[int]:
    """``count`` positions from 0 to n-1, evenly spread (first and last included)."""
    if n < 1:
        raise EvalError(f"need at least one item to place, got {n}")
    if count >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]


@dataclasses.dataclass
class PositionResult:
    kind: str
    model: dict[str, Any]
    rows: list[dict[str, Any]]
    settings: dict[str, Any]

    def curves(self) -> dict[str, dict[int, float]]:
        """group (number of pairs / documents) -> {position: accuracy}."""
        out: dict[str, dict[int, list[float]]] = {}
        for r in self.rows:
            out.setdefault(str(r["group"]), {}).setdefault(r["position"], []).append(r["correct"])
        return {g: {p: sum(v) / len(v) for p, v in sorted(c.items())} for g, c in out.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "eval": self.kind,
            "model": self.model,
            "settings": self.settings,
            "accuracy": self.curves(),
            "rows": self.rows,
        }

    def save(self, folder: str | os.PathLike, name: str | None = None) -> dict[str, Path]:
        folder = Path(folder)
        name = name or self.kind
        return {
            "json": write_json(self.to_dict(), folder / f"{name}.json"),
            "png": plot_positions(self, folder / f"{name}.png"),
        }


def _answer(
    adapter: Adapter, prompt: str, max_new_tokens: int, policy: str, what: str
) -> tuple[str, int, bool]:
    ids = adapter.encode(prompt)
    beyond = beyond_context(adapter, len(ids) + max_new_tokens, policy, what)
    return adapter.decode(adapter.generate_ids(ids, max_new_tokens)), len(ids), beyond


def run_kv(
    adapter: Adapter,
    num_pairs: Sequence[int] = (10, 25),
    positions: Sequence[int] | None = None,
    samples: int = 2,
    seed: int = 0,
    max_new_tokens: int | None = None,
    on_too_long: str = "mark",
    progress: Progress = None,
) -> PositionResult:
    """Key-value retrieval accuracy for each number of pairs x gold position (default: 5 spread positions)."""
    check_policy(on_too_long)
    if samples < 1:
        raise EvalError(f"samples must be >= 1, got {samples}")
    plan = []
    for n in num_pairs:
        at = list(positions) if positions is not None else spread_positions(n)
        bad = [p for p in at if not 0 <= p < n]
        if bad:
            raise EvalError(f"gold positions {bad} do not fit {n} pairs (0..{n - 1})")
        plan += [(n, p, s) for p in at for s in range(samples)]
    rows = []

    def count(text: str) -> int:
        return len(adapter.encode(text, special=False))

    for i, (n, p, s) in enumerate(plan):
        tick(progress, i, len(plan), f"{n} pairs, gold at {p}")
        probe = probes.make_kv_retrieval(n, p, seed=seed * 7919 + s, tokenizer=count)
        budget = answer_budget(adapter, probe.answers, max_new_tokens)
        output, tokens, beyond = _answer(
            adapter, probe.prompt, budget, on_too_long, f"kv retrieval with {n} pairs"
        )
        correct = metrics.best_of(metrics.substring_match, output, probe.answers)
        rows.append(
            {
                "group": n,
                "position": p,
                "sample": s,
                "tokens": tokens,
                "answer": probe.answers[0],
                "output": output,
                "correct": correct,
                "beyond_context": beyond,
            }
        )
    tick(progress, len(plan), len(plan), "done")
    return PositionResult(
        "kv_retrieval",
        adapter.describe(),
        rows,
        {"num_pairs": list(num_pairs), "samples": samples, "seed": seed},
    )


# --- multi-document QA -----------------------------------------------------------------------------


def load_qa(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Examples of the paper's multi-document QA JSONL (plain or gzip)."""
    path = require_file(
        path, "multi-document QA file", "give the path of a JSONL file in the Lost in the Middle format"
    )
    examples = read_jsonl(path, ("question", "answers", "ctxs"))
    if not examples:
        raise EvalError(f"{path} holds no examples")
    return examples


def _gold_index(ex: dict[str, Any]) -> int:
    for key in ("isgold", "hasanswer"):
        for i, c in enumerate(ex["ctxs"]):
            if c.get(key):
                return i
    raise EvalError(f"example {ex['question']!r} has no document marked isgold or hasanswer")


def qa_prompt(question: str, docs: Sequence[dict[str, Any]]) -> str:
    listing = "\n".join(
        f"Document [{i}](Title: {d.get('title', '')}) {d['text']}" for i, d in enumerate(docs, 1)
    )
    return (
        "Answer the question using only the search results below; some of them may be irrelevant.\n\n"
        f"{listing}\n\nQuestion: {question}\nAnswer:"
    )


def arrange(ex: dict[str, Any], position: int, n_docs: int | None = None) -> list[dict[str, Any]]:
    """The example's documents with the gold one moved to ``position``; ``n_docs`` keeps the first distractors."""
    g = _gold_index(ex)
    distractors = [c for i, c in enumerate(ex["ctxs"]) if i != g]
    if n_docs is not None:
        if n_docs - 1 > len(distractors):
            raise EvalError(f"n_docs={n_docs} but the example has only {len(distractors) + 1} documents")
        distractors = distractors[: n_docs - 1]
    if not 0 <= position <= len(distractors):
        raise EvalError(f"gold position {position} does not fit {len(distractors) + 1} documents")
    return distractors[:position] + [ex["ctxs"][g]] + distractors[position:]


def run_qa(
    adapter: Adapter,
    path: str | os.PathLike,
    positions: Sequence[int] | None = None,
    n_docs: int | None = None,
    limit: int | None = None,
    max_new_tokens: int = 32,
    on_too_long: str = "mark",
    progress: Progress = None,
) -> PositionResult:
    """Multi-document QA accuracy with the gold document at each position (default: 5 spread)."""
    check_policy(on_too_long)
    examples = load_qa(path)[:limit]
    total_docs = n_docs or len(examples[0]["ctxs"])
    at = list(positions) if positions is not None else spread_positions(total_docs)
    rows = []
    plan = [(e, p) for e in range(len(examples)) for p in at]
    for i, (e, p) in enumerate(plan):
        tick(progress, i, len(plan), f"example {e}, gold at {p}")
        ex = examples[e]
        docs = arrange(ex, p, n_docs)
        output, tokens, beyond = _answer(
            adapter, qa_prompt(ex["question"], docs), max_new_tokens, on_too_long, "multi-document QA"
        )
        first = output.strip().split("\n")[0]
        correct = metrics.best_of(metrics.substring_match, first, ex["answers"])
        rows.append(
            {
                "group": len(docs),
                "position": p,
                "example": e,
                "tokens": tokens,
                "answers": ex["answers"],
                "output": output,
                "correct": correct,
                "beyond_context": beyond,
            }
        )
    tick(progress, len(plan), len(plan), "done")
    return PositionResult(
        "multidoc_qa",
        adapter.describe(),
        rows,
        {"path": str(path), "n_docs": total_docs, "examples": len(examples)},
    )


def plot_positions(result: PositionResult, path: str | os.PathLike) -> Path:
    """Accuracy vs gold position, one line per number of pairs / documents (positions counted from 1)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for group, curve in result.curves().items():
        ax.plot(
            [p + 1 for p in curve],
            list(curve.values()),
            marker="o",
            label=f"{group} {'pairs' if result.kind == 'kv_retrieval' else 'documents'}",
        )
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("position of the gold " + ("pair" if result.kind == "kv_retrieval" else "document"))
    ax.set_ylabel("accuracy")
    ax.set_title(f"{result.kind}: {result.model.get('name', '')}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)
