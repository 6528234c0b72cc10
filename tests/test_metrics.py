"""Hand-computed fixtures for egg.metrics (lmms-eval-compatible scoring)."""

import importlib.util
import os
import random

import pytest

from egg.metrics import (
    anls,
    exact_match,
    levenshtein,
    multiple_choice,
    normalize_vqa_answer,
    parse_choice,
    pope,
    vqa_accuracy,
)

# ---------------------------------------------------------------------------
# VQA normalisation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        # number words -> digits (only zero..ten and "none")
        ("Two", "2"),
        ("two dogs", "2 dogs"),
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),
        # articles removed as whole words only
        ("The dog", "dog"),
        ("a cat", "cat"),
        ("an apple", "apple"),
        ("theater", "theater"),
        # contractions restored after lower-casing
        ("dont", "don't"),
        ("Dont", "don't"),
        ("isnt", "isn't"),
        ("im", "im"),  # reference table's "Im" key can never fire
        # thousands separator and periods
        ("1,000", "1000"),
        ("yes.", "yes"),
        ("3.5", "3.5"),
        ("a.m.", "am"),
        # punctuation: touching a space -> deleted, otherwise -> space
        ("red/blue", "red blue"),
        ("red / blue", "red blue"),
        ("t-shirt", "t shirt"),
        ("what?", "what"),
        ("(1,000) apples!", "1000 apples"),
        ("red,blue", "redblue"),  # commas are deleted before the punctuation rule
        # possessive split, whitespace handling
        ("man's hat", "man 's hat"),
        ("line1\nline2\tend", "line1 line2 end"),
        ("  YES  ", "yes"),
    ],
)
def test_normalize_vqa_answer(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_normalize_period_strip_is_capped_at_32():
    # lmms-eval passes re.UNICODE (32) as re.sub's count: only 32 periods go.
    out = normalize_vqa_answer("x." * 40)
    assert out.count(".") == 8


# ---------------------------------------------------------------------------
# VQA accuracy (leave-one-out over annotators)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("agree, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_ten_annotators(agree, expected):
    answers = ["cat"] * agree + ["dog"] * (10 - agree)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


def test_vqa_accuracy_normalises_both_sides():
    answers = ["two", "Two.", "2"] + ["three"] * 7
    assert vqa_accuracy("2", answers) == pytest.approx(0.9)
    assert vqa_accuracy("The dog", ["dog"] * 10) == pytest.approx(1.0)


def test_vqa_accuracy_fewer_than_ten_answers():
    # average runs over the n available leave-one-out subsets (as lmms-eval)
    assert vqa_accuracy("cat", ["cat", "cat", "cat"]) == pytest.approx(2 / 3)
    assert vqa_accuracy("cat", ["cat", "cat", "dog"]) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    # a single answer leaves an empty subset: always 0, even on a match
    assert vqa_accuracy("cat", ["cat"]) == 0.0
    assert vqa_accuracy("cat", []) == 0.0


def test_vqa_accuracy_styles_differ_on_commas():
    answers = ["red blue"] * 10
    assert vqa_accuracy("red,blue", answers) == 0.0  # textvqa: "redblue"
    assert vqa_accuracy("red,blue", answers, style="vqav2") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        vqa_accuracy("x", ["x"], style="gqa")


# ---------------------------------------------------------------------------
# ANLS
# ---------------------------------------------------------------------------


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0


def test_anls_exact_and_case_whitespace():
    assert anls("  Hello   World ", ["hello world"]) == pytest.approx(1.0)
    assert anls("", [""]) == 1.0


def test_anls_threshold_boundary():
    assert anls("abcd", ["abef"]) == pytest.approx(0.5)  # exactly 0.5 is kept
    assert anls("abcde", ["abcxy"]) == pytest.approx(0.6)
    assert anls("abcde", ["abxyz"]) == 0.0  # 0.4 < 0.5
    assert anls("abcd", ["abef"], threshold=0.6) == 0.0


def test_anls_max_over_answers_and_empty():
    assert anls("abcd", ["xyz", "abcf"]) == pytest.approx(0.75)
    assert anls("abcd", []) == 0.0


def test_anls_normalises_by_raw_length():
    # lmms-eval divides by the un-normalised answer length: "ab  " has 4 chars,
    # so one edit costs 1/4, not 1/2.
    assert anls("ac", ["ab  "]) == pytest.approx(0.75)


# ---------------------------------------------------------------------------
# POPE
# ---------------------------------------------------------------------------


def test_pope_counts():
    preds = ["yes", "no", "Yes", "no ", "yes.", "no"]
    labels = ["yes", "yes", "no", "no", "yes", "no"]
    # parsed: yes no yes no "yes." no -> correct 3/6; TP=1 FP=1 FN=1 ("yes." ignored)
    r = pope(preds, labels)
    assert r["accuracy"] == pytest.approx(0.5)
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(0.5)


def test_pope_unbalanced_and_yes_ratio():
    r = pope(["yes", "yes", "yes", "no"], ["yes", "no", "no", "no"])
    assert r["accuracy"] == pytest.approx(0.5)
    assert r["precision"] == pytest.approx(1 / 3)
    assert r["recall"] == pytest.approx(1.0)
    assert r["f1"] == pytest.approx(0.5)
    assert r["yes_ratio"] == pytest.approx(0.25)  # lmms-eval: ratio of "yes" labels
    assert r["pred_yes_ratio"] == pytest.approx(0.75)
    assert set(r) >= {"accuracy", "precision", "recall", "f1", "yes_ratio"}


def test_pope_degenerate_and_errors():
    r = pope(["no", "no"], ["yes", "no"])
    assert (r["precision"], r["recall"], r["f1"]) == (0.0, 0.0, 0.0)
    assert r["accuracy"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pope(["yes"], ["yes", "no"])
    with pytest.raises(ValueError):
        pope(["yes"], ["maybe"])


# ---------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------

OPTS = ["circle", "star", "square", "dark red"]


@pytest.mark.parametrize(
    "pred",
    ["B", "b", "(B)", "(b)", "B.", "b.", " B\n", "**B**", "The answer is B", "the answer is b",
     "Answer: B", "answer: (b).", "B. star", "(B) star", "B) star", "star", "STAR", "Star.",
     "A star", "It is a star.", "I choose B", "The correct option is B"],
)
def test_multiple_choice_parses_b(pred):
    assert multiple_choice(pred, OPTS, "B") == 1.0
    assert multiple_choice(pred, OPTS, "A") == 0.0


@pytest.mark.parametrize(
    "pred, expected",
    [
        ("The answer is a dog", None),  # article "a" is not option A
        ("The star is bigger than the circle", None),  # ambiguous
        ("red", None),  # only a part of option D's text
        ("dark red", "D"),
        ("Dog", None),  # no any-letter fallback
        ("", None),
        ("E", None),  # only 4 options
        ("C. square", "C"),
    ],
)
def test_parse_choice_edge_cases(pred, expected):
    assert parse_choice(pred, OPTS) == expected


def test_multiple_choice_answer_forms():
    assert multiple_choice("B", OPTS, "(b)") == 1.0
    assert multiple_choice("B", OPTS, "star") == 1.0
    assert multiple_choice("C", OPTS, "B") == 0.0


def test_multiple_choice_nested_option_prefers_longest():
    opts = ["red", "dark red"]
    assert multiple_choice("It is dark red.", opts, "B") == 1.0
    assert multiple_choice("It is red.", opts, "A") == 1.0


# ---------------------------------------------------------------------------
# Exact match (GQA)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred, answers, expected",
    [
        ("Yes.", ["yes"], 1.0),
        ("  yes \n", ["yes"], 1.0),
        ("no", ["yes"], 0.0),
        ("t-shirt", ["tshirt"], 1.0),
        ("left", ["right", "Left"], 1.0),
        ("yes", ["yes "], 0.0),  # lmms-eval strips the generation but not the answer
        ("the dog", ["dog"], 0.0),  # no article removal in GQA exact match
    ],
)
def test_exact_match(pred, answers, expected):
    assert exact_match(pred, answers) == expected


# ---------------------------------------------------------------------------
# Optional agreement with an installed lmms-eval (skipped when absent)
# ---------------------------------------------------------------------------


def _load_lmms_module(rel_path):
    """Load one dependency-free lmms-eval source file without importing the
    package (whose __init__ pulls in heavy optional dependencies)."""
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or spec.origin is None:
        pytest.skip("lmms-eval not installed")
    path = os.path.join(os.path.dirname(spec.origin), rel_path)
    if not os.path.exists(path):
        pytest.skip(f"lmms-eval has no {rel_path}")
    mod_spec = importlib.util.spec_from_file_location("_lmms_" + os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def _random_answers(rng, n):
    toks = ["a", "the", "two", "Two", "none", "1,000", "3.5", "dont", "man's", "red", "yes", ",",
            "?", ".", "-", "/", "(", ")", "!", "\n", "a.m.", "x,y", "foo_bar", "@", '"', ";", "hes"]
    return ["".join(rng.choice(toks) + rng.choice(["", " "]) for _ in range(rng.randint(0, 6)))
            for _ in range(n)]


def test_agrees_with_lmms_eval_vqa_normaliser():
    ref = _load_lmms_module(os.path.join("tasks", "_task_utils", "vqa_eval_metric.py")).EvalAIAnswerProcessor()
    rng = random.Random(0)
    for s in _random_answers(rng, 500):
        assert normalize_vqa_answer(s) == ref(s), repr(s)
    for _ in range(300):
        answers = [rng.choice(["two", "2", "Two.", "the dog", "dog", "red,blue", "red blue"])
                   for _ in range(rng.randint(1, 10))]
        pred = rng.choice(["two", "2", "dog", "A dog", "red,blue", "cat"])
        norm = [ref(a) for a in answers]
        p = ref(pred)
        expected = sum(min(1, sum(b == p for j, b in enumerate(norm) if j != i) / 3)
                       for i in range(len(norm))) / len(norm)
        assert vqa_accuracy(pred, answers) == pytest.approx(expected)


def test_agrees_with_lmms_eval_mcq_extract():
    ref = _load_lmms_module(os.path.join("tasks", "_task_utils", "mcq_extract.py"))
    opts = ["circle", "star", "square", "triangle"]
    for r in ["A", "(B)", "C.", "The answer is D", "The answer is (C).", "Answer: B", "B) star",
              "I choose A", "My answer is C.", "D triangle", "Option B", "**B**", "The answer is: C"]:
        assert parse_choice(r, opts) == ref.extract_mcq_answer(r, ["A", "B", "C", "D"]), r
