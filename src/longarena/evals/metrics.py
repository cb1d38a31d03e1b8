"""String metrics for generated answers: match, QA F1, ROUGE-L, classification, retrieval, count, code.

All take a prediction and one reference; ``best_of`` takes the maximum over several
references (the convention of SQuAD, Lost in the Middle and LongBench).

Normalisation (``normalize``) follows SQuAD: lower case, punctuation removed (every
Unicode punctuation character, so ``「」`` and ``—`` count too), the English articles
a/an/the removed, whitespace collapsed. Text in CJK scripts has no spaces, so its tokens
(``tokens``) are single characters.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"\d+")


def _strip_punct(text: str) -> str:
    return "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)


def normalize(text: str, *, articles: bool = True) -> str:
    text = _strip_punct(unicodedata.normalize("NFKC", text).lower())
    if articles:
        text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _is_cjk(c: str) -> bool:
    return any(
        lo <= ord(c) <= hi
        for lo, hi in (
            (0x3040, 0x30FF),
            (0x3400, 0x4DBF),
            (0x4E00, 0x9FFF),
            (0xAC00, 0xD7AF),
            (0xF900, 0xFAFF),
        )
    )


def tokens(text: str, *, articles: bool = True) -> list[str]:
    """Normalised words; CJK characters are one token each."""
    out: list[str] = []
    for word in normalize(text, articles=articles).split():
        if any(_is_cjk(c) for c in word):
            buf = ""
            for c in word:
                if _is_cjk(c):
                    if buf:
                        out.append(buf)
                        buf = ""
                    out.append(c)
                else:
                    buf += c
            if buf:
                out.append(buf)
        else:
            out.append(word)
    return out


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both normalise to the same string."""
    return float(normalize(prediction) == normalize(reference))


def substring_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised reference occurs in the normalised prediction (Lost in the
    Middle's "best subspan" accuracy, RULER's string match). Matching is by whole tokens,
    so "12" is not found in "123"."""
    ref = normalize(reference)
    return float(bool(ref) and f" {ref} " in f" {normalize(prediction)} ")


def qa_f1(prediction: str, reference: str) -> float:
    """Token-level F1 between normalised prediction and reference (SQuAD / LongBench QA)."""
    p, r = tokens(prediction), tokens(reference)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            cur = row[j]
            row[j] = prev + 1 if x == y else max(row[j], row[j - 1])
            prev = cur
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: the longest common token subsequence, as precision and recall, F1 of both."""
    p, r = tokens(prediction, articles=False), tokens(reference, articles=False)
    lcs = _lcs(p, r) if p and r else 0
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def classification_score(prediction: str, reference: str, classes: Sequence[str]) -> float:
    """1/k when the reference class is among the k class names found in the prediction.

    A class name found only inside a longer matched name ("cat" in "wildcat") does not count.
    """
    found = [c for c in classes if c and c in prediction]
    found = [c for c in found if not any(c != o and c in o for o in found)]
    return 1.0 / len(found) if reference in found else 0.0


def _numbers(text: str) -> list[str]:
    return _NUMBER.findall(text)


def retrieval_score(prediction: str, reference: str) -> float:
    """Passage retrieval: fraction of the numbers in the prediction equal to the reference's
    passage number ("Paragraph 7" -> 7)."""
    ref = _numbers(reference)
    if not ref:
        raise ValueError(f"a retrieval reference names a passage by number, got {reference!r}")
    found = _numbers(prediction)
    return sum(n == ref[0] for n in found) / len(found) if found else 0.0


def count_score(prediction: str, reference: str) -> float:
    """Passage count: fraction of the numbers in the prediction equal to the reference count."""
    found = _numbers(prediction)
    return sum(n == str(reference).strip() for n in found) / len(found) if found else 0.0


def first_code_line(prediction: str) -> str:
    """The first line that is code: not blank, not a comment, not a Markdown fence."""
    for line in prediction.lstrip("\n").split("\n"):
        s = line.strip()
        if s and not s.startswith(("#", "//", "`")):
            return line
    return ""


def code_similarity(prediction: str, reference: str) -> float:
    """Edit similarity of the first code line to the reference, 2*matches/total characters
    (difflib's ratio, the measure fuzzywuzzy's ``ratio`` reports / 100)."""
    return difflib.SequenceMatcher(None, first_code_line(prediction), reference).ratio()


def best_of(metric: Callable[..., float], prediction: str, references: Sequence[str] | str, **kw) -> float:
    """The best score of ``prediction`` over several references."""
    if isinstance(references, str):
        references = [references]
    if not references:
        raise ValueError("no reference answers to score against")
    return max(metric(prediction, r, **kw) for r in references)
