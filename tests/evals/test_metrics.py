"""String metrics on hand-made cases; every expected value is worked out in the comments."""

from __future__ import annotations

import pytest

from longarena.evals import metrics as m


def test_normalize_strips_unicode_punctuation_articles_and_case():
    assert m.normalize("The  Quick, brown—fox!") == "quick brown fox"
    assert m.normalize("«Ça va?» an ÉLAN") == "ça va élan"
    assert m.normalize("「東京」です。") == "東京 です"
    assert m.tokens("東京 is big") == ["東", "京", "is", "big"]


def test_exact_and_substring_match():
    assert m.exact_match("  The Paris.", "paris") == 1.0
    assert m.exact_match("Paris, France", "Paris") == 0.0
    assert m.substring_match("The pass key is 51815. Remember", "51815") == 1.0
    assert m.substring_match("518150", "51815") == 0.0  # whole tokens only
    assert m.substring_match("answer: New York City", "new york") == 1.0
    assert m.substring_match("anything", "!!!") == 0.0  # empty after normalisation never matches


def test_qa_f1_by_hand():
    # pred tokens [barack, obama, was, president], ref [obama] -> common 1, P=1/4, R=1, F1=2*(1/4)/(5/4)=0.4
    assert m.qa_f1("Barack Obama was president.", "Obama") == pytest.approx(0.4)
    # duplicates count once per occurrence in both: pred [a?]: "the cat cat" -> [cat, cat]; ref "cat" -> common 1, P=1/2,R=1 -> 2/3
    assert m.qa_f1("the cat cat", "a cat") == pytest.approx(2 / 3)
    assert m.qa_f1("dog", "cat") == 0.0
    # CJK by characters: pred [北,京,大,学], ref [北,京] -> P=1/2, R=1 -> 2/3
    assert m.qa_f1("北京大学", "北京") == pytest.approx(2 / 3)
    # several references: best of F1=0 (cat) and F1=1 (dog)
    assert m.best_of(m.qa_f1, "dog", ["cat", "Dog!"]) == 1.0


def test_rouge_l_by_hand():
    # pred [police, killed, the, gunman], ref [the, gunman, was, killed, by, police]
    # LCS: "the gunman" (2) vs "police killed"(needs killed before police? no): "police ... " -> police is last in ref,
    # so candidates: [the, gunman] = 2, [killed] = 1 -> LCS 2; P = 2/4, R = 2/6, F1 = 2*(1/2)(1/3)/(5/6) = 0.4
    assert m.rouge_l("police killed the gunman", "the gunman was killed by police") == pytest.approx(0.4)
    assert m.rouge_l("a b c", "a b c") == pytest.approx(1.0)
    assert m.rouge_l("", "a") == 0.0


def test_classification_retrieval_count_code():
    classes = ["positive", "negative", "very positive"]
    # "very positive" matched; "positive" lies inside it and is dropped -> 1 class, the gold one
    assert m.classification_score("It is very positive.", "very positive", classes) == 1.0
    # two classes named, gold among them -> 1/2
    assert m.classification_score("positive or negative", "negative", classes) == 0.5
    assert m.classification_score("no idea", "negative", classes) == 0.0
    # numbers 3, 7, 3 against Paragraph 3 -> 2/3
    assert m.retrieval_score("Paragraph 3, maybe 7 or 3", "Paragraph 3") == pytest.approx(2 / 3)
    assert m.retrieval_score("none", "Paragraph 3") == 0.0
    with pytest.raises(ValueError, match="passage by number"):
        m.retrieval_score("1", "no number")
    assert m.count_score("There are 12 unique paragraphs, not 13.", "12") == 0.5
    # first code line skips the fence and the comment; "x = 1" vs "x = 2": 4 of 5 chars match each side -> 2*4/10
    assert m.first_code_line("```python\n# set x\nx = 1\ny = 2") == "x = 1"
    assert m.code_similarity("```python\n# set x\nx = 1\n", "x = 2") == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no reference"):
        m.best_of(m.qa_f1, "x", [])
