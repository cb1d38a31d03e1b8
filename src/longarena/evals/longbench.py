"""LongBench (Bai et al. 2023) from local files: prompts, middle truncation, per-task metrics.

Data: the official release, one ``<dataset>.jsonl`` per task in a folder (``narrativeqa.jsonl``,
``gov_report.jsonl``, ... and the LongBench-E ``*_e.jsonl`` files), each line
``{"input", "context", "answers": [...], "length", "dataset", "language", "all_classes", "_id"}``.

Protocol: each task has a prompt template (written for LongArena, in the spirit of the
official ones) and a generation budget (the official ``maxlen`` values). A prompt longer than
the model's budget (``max_input_tokens``, default the trained length minus the generation
budget) is truncated in the middle: its first and last halves are kept, because task
instructions sit at both ends. Truncation is recorded per example, never silent. The answer
is decoded greedily; for the few-shot tasks (trec, triviaqa, samsum, lsht) only its first
line counts, since the model would otherwise continue the pattern of examples.

Metrics (``metrics.py``; score = best over references, task score = mean x 100): QA F1
(English words; Chinese by characters where the official scorer segments words with
jieba), ROUGE-L F1 (summaries; Chinese by characters), classification, passage retrieval,
passage count, code edit similarity.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from longarena.evals import metrics
from longarena.evals.adapter import Adapter, EvalError
from longarena.evals.common import Progress, read_jsonl, tick, write_json

_QA = "Read the text below and answer the question with as few words as possible.\n\n{context}\n\nQuestion: {input}\nAnswer:"
_QA_ZH = "阅读以下文字并用尽量简短的话回答问题。\n\n{context}\n\n问题：{input}\n回答："
_SUM = "{context}\n\nSummarise the text above in one paragraph.\n\nSummary:"
_QSUM = "{context}\n\nAnswer the query about the transcript above with a short summary.\n\nQuery: {input}\nAnswer:"
_SUM_ZH = "{context}\n\n用一段话总结上面的会议记录。\n\n总结："
_FEWSHOT = "{context}\n{input}"
_COUNT = (
    "{context}\n\nSome of the paragraphs above may be duplicates. How many different paragraphs are there? "
    "Reply with the number only.\n\nAnswer:"
)
_RETRIEVE = (
    "{context}\n\nThis summary describes one of the paragraphs above:\n\n{input}\n\n"
    'Which paragraph is it? Reply in the form "Paragraph 1".\n\nAnswer:'
)
_RETRIEVE_ZH = '{context}\n\n下面的摘要出自上面的哪一段？\n\n{input}\n\n请用"段落1"的格式回答。\n\n答案：'
_CODE = "Continue the code below with its next line.\n\n{context}{input}"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    metric: str
    template: str
    max_new_tokens: int
    first_line: bool = False


TASKS: dict[str, TaskSpec] = {
    "narrativeqa": TaskSpec("qa_f1", _QA, 128),
    "qasper": TaskSpec("qa_f1", _QA, 128),
    "multifieldqa_en": TaskSpec("qa_f1", _QA, 64),
    "multifieldqa_zh": TaskSpec("qa_f1", _QA_ZH, 64),
    "hotpotqa": TaskSpec("qa_f1", _QA, 32),
    "2wikimqa": TaskSpec("qa_f1", _QA, 32),
    "musique": TaskSpec("qa_f1", _QA, 32),
    "dureader": TaskSpec("rouge_l", _QA_ZH, 128),
    "gov_report": TaskSpec("rouge_l", _SUM, 512),
    "qmsum": TaskSpec("rouge_l", _QSUM, 512),
    "multi_news": TaskSpec("rouge_l", _SUM, 512),
    "vcsum": TaskSpec("rouge_l", _SUM_ZH, 512),
    "trec": TaskSpec("classification", _FEWSHOT, 64, first_line=True),
    "triviaqa": TaskSpec("qa_f1", _FEWSHOT, 32, first_line=True),
    "samsum": TaskSpec("rouge_l", _FEWSHOT, 128, first_line=True),
    "lsht": TaskSpec("classification", _FEWSHOT, 64, first_line=True),
    "passage_count": TaskSpec("count", _COUNT, 32),
    "passage_retrieval_en": TaskSpec("retrieval", _RETRIEVE, 32),
    "passage_retrieval_zh": TaskSpec("retrieval", _RETRIEVE_ZH, 32),
    "lcc": TaskSpec("code_sim", _CODE, 64),
    "repobench-p": TaskSpec("code_sim", _CODE, 64),
}

METRICS: dict[str, Callable[..., float]] = {
    "qa_f1": metrics.qa_f1,
    "rouge_l": metrics.rouge_l,
    "classification": metrics.classification_score,
    "retrieval": metrics.retrieval_score,
    "count": metrics.count_score,
    "code_sim": metrics.code_similarity,
}


def task_spec(dataset: str) -> TaskSpec:
    """The spec of a LongBench task; LongBench-E names (``hotpotqa_e``) share their base task's."""
    base = dataset.removesuffix("_e")
    if base not in TASKS:
        raise EvalError(
            f"unknown LongBench task {dataset!r}; known: {', '.join(sorted(TASKS))} (and *_e variants)"
        )
    return TASKS[base]


def score_example(
    dataset: str, prediction: str, answers: Sequence[str], all_classes: Sequence[str] | None = None
) -> float:
    """The task's metric of one prediction, best over the references, in [0, 1]."""
    spec = task_spec(dataset)
    if spec.first_line:
        prediction = prediction.lstrip("\n").split("\n")[0]
    kw = {"classes": all_classes or []} if spec.metric == "classification" else {}
    return metrics.best_of(METRICS[spec.metric], prediction, list(answers), **kw)


def load_task(folder: str | os.PathLike, dataset: str, limit: int | None = None) -> list[dict[str, Any]]:
    task_spec(dataset)
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"LongBench folder not found at {folder}; give the folder holding <task>.jsonl files")
    path = folder / f"{dataset}.jsonl"
    if not path.is_file():
        present = sorted(p.stem for p in folder.glob("*.jsonl"))
        raise EvalError(f"{path} is missing; the folder holds: {', '.join(present) or 'no .jsonl files'}")
    rows = read_jsonl(path, ("input", "context", "answers"), limit)
    return rows


def available_tasks(folder: str | os.PathLike) -> list[str]:
    """The known tasks that have a file in ``folder``."""
    out = []
    for p in sorted(Path(folder).glob("*.jsonl")):
        try:
            task_spec(p.stem)
        except EvalError:
            continue
        out.append(p.stem)
    return out


def truncate_middle(ids: Sequence[int], budget: int) -> tuple[list[int], bool]:
    """Keep the first ``budget // 2`` and last ``budget - budget // 2`` ids when longer than ``budget``."""
    if budget < 2:
        raise EvalError(f"the input budget must be at least 2 tokens, got {budget}")
    ids = list(ids)
    if len(ids) <= budget:
        return ids, False
    head = budget // 2
    return ids[:head] + ids[len(ids) - (budget - head) :], True


@dataclasses.dataclass
class LongBenchResult:
    model: dict[str, Any]
    scores: dict[str, float]
    rows: list[dict[str, Any]]
    max_input_tokens: int | None

    def table(self) -> list[dict[str, Any]]:
        out = []
        for task, score in self.scores.items():
            rows = [r for r in self.rows if r["dataset"] == task]
            out.append(
                {
                    "task": task,
                    "metric": task_spec(task).metric,
                    "n": len(rows),
                    "score": score,
                    "truncated": sum(r["truncated"] for r in rows),
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        avg = sum(self.scores.values()) / len(self.scores) if self.scores else None
        return {
            "eval": "longbench",
            "model": self.model,
            "max_input_tokens": self.max_input_tokens,
            "scores": self.scores,
            "average": avg,
            "table": self.table(),
            "rows": self.rows,
        }

    def save(self, folder: str | os.PathLike, name: str = "longbench") -> dict[str, Path]:
        return {"json": write_json(self.to_dict(), Path(folder) / f"{name}.json")}


def evaluate(
    adapter: Adapter,
    folder: str | os.PathLike,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    max_input_tokens: int | None = None,
    progress: Progress = None,
) -> LongBenchResult:
    """Greedy answers and task scores (x 100) for ``tasks`` (default: every known task in ``folder``)."""
    tasks = list(tasks) if tasks else available_tasks(folder)
    if not tasks:
        raise EvalError(f"no LongBench task files (<task>.jsonl) in {folder}")
    data = {t: load_task(folder, t, limit) for t in tasks}
    total = sum(len(v) for v in data.values())
    rows: list[dict[str, Any]] = []
    scores: dict[str, float] = {}
    for task, examples in data.items():
        spec = task_spec(task)
        budget = max_input_tokens
        if budget is None and adapter.max_length is not None:
            budget = adapter.max_length - spec.max_new_tokens
        task_scores = []
        for ex in examples:
            tick(progress, len(rows), total, task)
            prompt = spec.template.format(context=ex["context"], input=ex["input"])
            ids = adapter.encode(prompt)
            ids, truncated = truncate_middle(ids, budget) if budget is not None else (ids, False)
            prediction = adapter.decode(adapter.generate_ids(ids, spec.max_new_tokens))
            s = score_example(task, prediction, ex["answers"], ex.get("all_classes"))
            task_scores.append(s)
            rows.append(
                {
                    "dataset": task,
                    "_id": ex.get("_id"),
                    "tokens": len(ids),
                    "truncated": truncated,
                    "prediction": prediction,
                    "answers": ex["answers"],
                    "score": s,
                }
            )
        scores[task] = 100.0 * sum(task_scores) / len(task_scores) if task_scores else float("nan")
    tick(progress, total, total, "longbench")
    return LongBenchResult(adapter.describe(), scores, rows, max_input_tokens)
