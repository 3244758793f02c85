"""The official metric semantics, each checked against values worked out by hand."""

from __future__ import annotations

import pytest

from tokencomp.eval import metrics
from tokencomp.eval.vqa_normalise import normalise_answer


@pytest.mark.parametrize(("k", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out_table(k, expected):
    # k of 10 humans said "cat": the k who did see k-1 matches among the other 9, the 10-k others see k
    answers = ["cat"] * k + ["dog"] * (10 - k)
    assert metrics.vqa_accuracy("cat", answers) == pytest.approx(expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("Two.", "2"),  # period dropped, number word to digit
    ("The Dog", "dog"),  # lower case, article dropped
    ("dont", "don't"),  # contraction repaired
    ("3.5", "3.5"),  # a decimal point stays
    ("100,978", "100978"),  # digit,digit group: marks deleted, not spaced
    ("black-and-white", "black and white"),  # a mark inside a word becomes a space
    ("yes !", "yes"),  # a mark next to a space is deleted
    ("  a\\tcat\\n", "cat"),
    ("o'clock", "o'clock"),  # apostrophe is not punctuation here
])
def test_vqa_normalisation(text, expected):
    assert normalise_answer(text.replace("\\t", "\t").replace("\\n", "\n")) == expected


def test_vqa_accuracy_normalises_both_sides():
    answers = ["two", "2", "2 ", "Two", "two.", "3", "3", "3", "three", "4"]
    # 5 of 10 say 2 after normalisation -> 1.0; 4 say 3 -> 1.0; 1 says 4 -> 0.3
    assert metrics.vqa_accuracy("2", answers) == pytest.approx(1.0)
    assert metrics.vqa_accuracy("Three", answers) == pytest.approx(1.0)
    assert metrics.vqa_accuracy("four", answers) == pytest.approx(0.3)


def test_evalai_tokenisation_for_textvqa():
    assert normalise_answer("Coca-Cola's", evalai=True) == "coca cola 's"
    answers = ["coca-cola's"] * 2 + ["coke"] * 8
    assert metrics.vqa_accuracy("Coca-Cola's?", answers, evalai=True) == pytest.approx(0.6)


def test_gqa_exact_match():
    assert metrics.gqa_match("Yes.", "yes") == 1.0
    assert metrics.gqa_match(" Table ", "table") == 1.0
    assert metrics.gqa_match("the table", "table") == 0.0  # no article removal in GQA


@pytest.mark.parametrize(("text", "parsed"), [
    ("Yes", "yes"), ("No.", "no"), ("Yes, there is a cat.", "yes"), ("There is no cat.", "no"),
    ("It is not there", "no"), ("yes and no", None), ("maybe", None), ("", None), ("Yes!", "yes"),
])
def test_yes_no_parser(text, parsed):
    assert metrics.parse_yes_no(text) == parsed


def _rec(prediction, answer, group="g", **meta):
    return {"prediction": prediction, "answers": [answer], "group": group, "meta": meta}


def test_pope_metrics_by_hand():
    # random: gold yes,yes,no,no,yes ; pred yes,no,yes,no,??? -> tp 1, fp 1, fn 2 (the unparsable one counts)
    random = [_rec("Yes", "yes", "random"), _rec("No", "yes", "random"), _rec("yes", "no", "random"),
              _rec("no", "no", "random"), _rec("perhaps", "yes", "random")]
    # popular: all correct, 2 yes 2 no
    popular = [_rec("yes", "yes", "popular"), _rec("Yes.", "yes", "popular"), _rec("no", "no", "popular"),
               _rec("No, there is not.", "no", "popular")]
    result = metrics.pope_aggregate(random + popular)
    r = result["splits"]["random"]
    assert r["accuracy"] == pytest.approx(2 / 5)
    assert r["precision"] == pytest.approx(1 / 2)
    assert r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))  # 0.4
    assert r["yes_ratio"] == pytest.approx(2 / 5)
    assert result["splits"]["popular"]["f1"] == pytest.approx(1.0)
    assert result["score"] == pytest.approx((0.4 + 1.0) / 2)
    pooled = result["pooled"]  # tp 3, fp 1, fn 2
    assert pooled["precision"] == pytest.approx(3 / 4) and pooled["recall"] == pytest.approx(3 / 5)


@pytest.mark.parametrize(("text", "parsed"), [
    ("Yes", "yes"), ("no.", "no"), ("Yes, it is.", "yes"), ("Nope", "no"), ("I think yes", None),
    ("Not at all", "no"),
])
def test_mme_parser(text, parsed):
    assert metrics.parse_mme(text) == parsed


def test_mme_scores_by_hand():
    records = [
        # color: image 1 both right, image 2 one right -> acc 3/4, acc+ 1/2 -> 75 + 50 = 125
        _rec("Yes", "Yes", "color", image="c1"), _rec("No", "No", "color", image="c1"),
        _rec("Yes", "Yes", "color", image="c2"), _rec("Yes", "No", "color", image="c2"),
        # OCR: one image, both right -> 200
        _rec("yes", "Yes", "OCR", image="o1"), _rec("no", "No", "OCR", image="o1"),
        # code_reasoning: both wrong -> 0 ; numerical_calculation: one right -> 50 + 0
        _rec("No", "Yes", "code_reasoning", image="k1"), _rec("Yes", "No", "code_reasoning", image="k1"),
        _rec("Yes", "Yes", "numerical_calculation", image="n1"), _rec("?", "No", "numerical_calculation", image="n1"),
    ]
    result = metrics.mme_aggregate(records)
    assert result["subtasks"]["color"]["score"] == pytest.approx(125)
    assert result["perception"] == pytest.approx(325)
    assert result["cognition"] == pytest.approx(50)
    assert result["score"] == pytest.approx(375)


@pytest.mark.parametrize(("text", "letter"), [
    ("B", "B"), ("b", "B"), ("C. a cat", "C"), ("(A) the sun", "A"), ("The answer is A.", "A"),
    ("Answer is: C", "C"), ("E", None), ("Apple", None), ("the answer is a cat", None),
])
def test_scienceqa_letter(text, letter):
    assert metrics.extract_letter(text, "ABCD") == letter
