"""egg.metrics against lmms-eval's own scoring code, on a bank of tricky cases.

Needs lmms-eval and the light packages its task utilities import (``pip install -e .[lmms]``:
lmms-eval (--no-deps is enough), loguru, pytz, sacrebleu, evaluate, datasets). lmms-eval's
pipeline strips every generation before scoring (``api/task.py``), so its functions get
``prediction.strip()`` while egg's get the raw prediction.

Multiple choice: egg follows lmms-eval's shared ``mcq_extract.extract_mcq_answer`` (used by
RealWorldQA) for responses that contain a capital choice letter; by design it also reads
lower-case letters and option texts and drops the extractor's any-occurrence fallback
("Dog" -> "D"). Those cases are listed explicitly (DIVERGENT_MC) with both outcomes, so a
change on either side shows up.
"""
from __future__ import annotations

import copy
import random

import pytest

from egg import metrics

pytest.importorskip("lmms_eval", reason="pip install -e .[lmms]")
lm_metrics = pytest.importorskip("lmms_eval.api.metrics")
textvqa_utils = pytest.importorskip("lmms_eval.tasks.textvqa.utils")
pope_utils = pytest.importorskip("lmms_eval.tasks.pope.utils")
mcq = pytest.importorskip("lmms_eval.tasks._task_utils.mcq_extract")
rwqa_utils = pytest.importorskip("lmms_eval.tasks.realworldqa.utils")

# --------------------------------------------------------------------------- VQA accuracy

VQA_PREDS = [
    "two", "2", "Two", "2.", "two.", " 2 ", "the two", "a dog", "dog", "Dog!", "dogs", "the dog's bone",
    "dog's", "dogs'", "1,000", "1000", "1,000,000", "3.5", "3.50", ".5", "0.5", "a.m.", "am", "p.m", "dont",
    "don't", "Dont", "cant", "can't", "isnt", "yes", "Yes", "YES.", "no", "No!", "none", "zero", "0", "ten", "10",
    "red/blue", "red / blue", "red-blue", "red - blue", "red,blue", "red, blue", "coca-cola", "coca cola",
    "Coca Cola", "e-mail", "email", "u.s.a.", "usa", "U.S.A", "st. louis", "st louis", "hello world?", "(hello)",
    "\"quoted\"", "it's", "its", "he's", "hes", "o'clock", "oclock", "12:30", "12 30", "$5", "5$", "50%", "50",
    "#1", "1", "no. 1", "@home", "home", "a", "an", "the", "", "   ", "\n", "word\twith tab", "multi\nline",
    "a b c", "abc", "ABC", "x_y", "x y", "foo=bar", "foo bar", "semi;colon", "semi colon", "1/2", "1 2",
    "12", "twelve", "three", "3", "iii", "III", "100%", "...", "Ok.", "ok", "o.k.", "mr. smith", "mr smith",
]
VQA_ANSWER_SETS = [
    ["2"] * 10, ["two"] * 4 + ["2"] * 6, ["dog"] * 3 + ["dogs"] * 3 + ["a dog"] * 4, ["1000"] * 5 + ["1,000"] * 5,
    ["don't"] * 10, ["yes"] * 9 + ["no"], ["red blue"] * 5 + ["red/blue"] * 5, ["coca cola"] * 6 + ["coca-cola"] * 4,
    ["usa"] * 7 + ["u.s.a."] * 3, ["3.5"] * 2 + ["3.50"] * 8, ["st louis"] * 10, ["12:30"] * 10, ["50%"] * 10,
    ["abc"], ["hello world"] * 2, ["am"] * 3 + ["a.m."] * 7, ["it's"] * 10, ["0"] * 5 + ["none"] * 5,
]


def _lmms_vqa(pred, answers):
    doc = {"answers": list(answers), "question_id": 0}
    return textvqa_utils.textvqa_process_results(copy.deepcopy(doc), [pred.strip()])["exact_match"]


def _vqa_cases():
    rng = random.Random(0)
    cases = [(p, VQA_ANSWER_SETS[i % len(VQA_ANSWER_SETS)]) for i, p in enumerate(VQA_PREDS)]
    # plus each answer set against predictions taken from its own answers (partial agreement)
    for ans in VQA_ANSWER_SETS:
        for p in sorted(set(ans)):
            cases.append((p, ans))
            cases.append((p.upper() + ".", ans))
    for _ in range(40):
        ans = rng.choice(VQA_ANSWER_SETS)
        cases.append((rng.choice(VQA_PREDS) + rng.choice(["", " ", ".", "?", "!"]), ans))
    return cases


VQA_CASES = _vqa_cases()


@pytest.mark.parametrize("pred,answers", VQA_CASES)
def test_vqa_accuracy_matches_lmms_eval(pred, answers):
    assert metrics.vqa_accuracy(pred, answers) == pytest.approx(_lmms_vqa(pred, answers), abs=1e-12)


# --------------------------------------------------------------------------- ANLS

ANLS_CASES = [
    ("1984", ["1984"]), ("1985", ["1984"]), ("19", ["1984"]), ("", ["1984"]), ("  1984  ", ["1984"]),
    ("Dr. Smith", ["dr. smith"]), ("dr smith", ["Dr. Smith"]), ("DR.  SMITH", ["dr. smith"]),
    ("abc", ["abd"]), ("ab", ["abcd"]), ("abcd", ["ab"]), ("a", ["b"]), ("ab", ["ac"]), ("abc", ["xyz"]),
    ("abcdef", ["abcxyz"]), ("abcdefg", ["abcxyzw"]), ("0.5", ["0.5"]), ("$1,000", ["1,000"]), ("1,000", ["$1,000"]),
    ("New York", ["new york", "NYC"]), ("nyc", ["new york", "NYC"]), ("N.Y.C.", ["new york", "NYC"]),
    ("the answer", ["answer"]), ("answer", ["the answer"]), ("answers", ["answer"]), ("Answer\n", ["answer"]),
    ("a  b", ["a b"]), ("a\tb", ["a b"]), ("a b", [" a b "]), ("x", [""]), ("", [""]), ("", ["", "a"]),
    ("hello", ["help", "hello world"]), ("hello world", ["hello"]), ("12/03/1998", ["12/3/1998"]),
    ("March 12, 1998", ["12 march 1998"]), ("50%", ["50"]), ("50", ["50%"]), ("5", ["50%"]),
    ("ÉCOLE", ["école"]), ("straße", ["STRASSE"]), ("ﬁ", ["fi"]), ("İ", ["i"]), ("ab", ["AB", "abc"]),
    ("1", ["1", "2", "3"]), ("4", ["1", "2", "3"]), ("yes", ["no"]), ("yes", ["yess"]), ("ye", ["yes"]),
    ("abcd", ["abce"]), ("abcd", ["abef"]), ("abcd", ["aefg"]), ("abcdefghij", ["abcdeklmno"]),
    ("abcdefghij", ["abcdefklmn"]), ("total: 45", ["45"]), ("45", ["total: 45"]), ("  ", ["a"]),
]


@pytest.mark.parametrize("pred,answers", ANLS_CASES)
def test_anls_matches_lmms_eval(pred, answers):
    ref = lm_metrics.anls(references=answers, predictions=[pred.strip()])["anls"]
    assert metrics.anls(pred, answers) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("thr", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_anls_threshold_matches_lmms_eval(thr):
    for pred, answers in ANLS_CASES:
        ref = lm_metrics.anls(references=answers, predictions=[pred.strip()], thresh_hold=thr)["anls"]
        assert metrics.anls(pred, answers, threshold=thr) == pytest.approx(ref, abs=1e-12), (pred, answers, thr)


# --------------------------------------------------------------------------- exact match (GQA)

EM_CASES = [
    ("yes", "yes"), ("Yes", "yes"), ("yes.", "yes"), (" yes ", "yes"), ("yes!", "Yes"), ("no", "yes"),
    ("left", "left"), ("Left.", "left"), ("on the left", "left"), ("the left", "left"), ("lef t", "left"),
    ("t-shirt", "t-shirt"), ("tshirt", "t-shirt"), ("t shirt", "t-shirt"), ("man's", "mans"), ("mans", "man's"),
    ("white", "White"), ("WHITE", "white"), ("gray", "grey"), ("2", "two"), ("two", "two"), ("a", "a"),
    ("", ""), ("", "yes"), ("(yes)", "yes"), ("[no]", "no"), ("\"table\"", "table"), ("table's", "tables"),
    ("table,", "table"), ("chair/table", "chairtable"), ("chair / table", "chair  table"), ("dog\n", "dog"),
    ("Dog", "dog"), ("d.o.g.", "dog"), ("cat?", "cat"), ("cat", "cat?"), ("blue-green", "bluegreen"),
    ("é", "É"), ("café", "cafe"), ("top", "top"), ("Top", "bottom"), ("wooden", "wood"), ("wood", "wood"),
    ("metal.", "metal"), ("plastic", "Plastic!"), ("right side", "right"), ("right", "right"), ("1.5", "15"),
    ("1,5", "15"), ("$5", "5"), ("5%", "5"), ("5", "5"), ("  ", ""), ("\tno", "no"), ("no\t", "no"),
    ("yes, it is", "yes"), ("no.", "No"), ("the sky", "sky"), ("sky", "the sky"), ("under_score", "underscore"),
]


@pytest.mark.parametrize("pred,answer", EM_CASES)
def test_exact_match_matches_lmms_eval(pred, answer):
    ref = lm_metrics.exact_match_hf_evaluate(predictions=[pred.strip()], references=[answer], ignore_case=True,
                                             ignore_punctuation=True)["exact_match"]
    assert metrics.exact_match(pred, [answer]) == pytest.approx(float(ref))


# --------------------------------------------------------------------------- POPE

POPE_PREDS = ["yes", "no", "Yes", "No", "YES", "NO", " yes ", "no\n", "Yes.", "No.", "yes,", "Yes, there is",
              "no, there is not", "y", "n", "", "maybe", "yes no", "There is a dog.", "nope", "yeah", "Yes!", "NO!"]


def _lmms_pope(preds, labels):
    rs = [pope_utils.pope_process_results({"answer": g, "question_id": i}, [p.strip()])["pope_accuracy"]
          for i, (p, g) in enumerate(zip(preds, labels))]
    return {"accuracy": pope_utils.pope_aggregate_accuracy(rs), "precision": pope_utils.pope_aggregate_precision(rs),
            "recall": pope_utils.pope_aggregate_recall(rs), "f1": pope_utils.pope_aggregate_f1_score(rs),
            "yes_ratio": pope_utils.pope_aggregate_yes_ratio(rs)}


def _pope_cases():
    rng = random.Random(1)
    cases = [([p], [g]) for p in POPE_PREDS for g in ("yes", "no", "Yes", " no ")]
    for k in (2, 5, 10, 40):
        for _ in range(5):
            cases.append(([rng.choice(POPE_PREDS) for _ in range(k)], [rng.choice(["yes", "no"]) for _ in range(k)]))
    cases.append((["no"] * 5, ["no"] * 5))  # no positives at all: precision = recall = 0
    cases.append((["yes"] * 5, ["no"] * 5))
    return cases


@pytest.mark.parametrize("preds,labels", _pope_cases())
def test_pope_matches_lmms_eval(preds, labels):
    ours = metrics.pope(preds, labels)
    ref = _lmms_pope(preds, labels)
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-12), k


# --------------------------------------------------------------------------- multiple choice

OPTIONS = ["cross", "square", "star", "triangle"]
LETTERS = ["A", "B", "C", "D"]
# Capital-letter formats: egg must read them exactly like lmms-eval's extract_mcq_answer.
AGREEING_MC = [
    "A", "B", "C", "D", "(A)", "(B)", "C.", "D)", "B:", " A ", "A. cross", "B. square", "(C) star", "C) star",
    "D. triangle", "The answer is C", "The answer is (B)", "Answer: B", "Answer: (A) cross", "answer is D.",
    "Option D", "The correct option is B.", "I think B", "B is correct", "I choose C", "It is A.", "A, because",
    "both A and B", "A or B", "B\n", "**B**", "[C]", "{D}", "C star", "A.B", "Between A and D, D", "none", "",
    "E", "(E)", "The answer is a dog", "Final answer: C.", "(D) triangle.", "A: cross", "B) square",
]
# (response, egg's letter, extract_mcq_answer's letter): deliberate differences.
DIVERGENT_MC = [
    ("b", "B", ""), ("(b)", "B", ""), ("a", "A", ""), ("d.", "D", ""), ("the answer is (d)", "D", ""),
    ("answer: b", "B", ""), ("cross", "A", ""), ("Square", "B", ""), ("a star", "C", ""), ("The star", "C", ""),
    ("triangle.", "D", ""), ("Dog", None, "D"), ("LED.", None, "D"), ("AB", None, "B"),
]


@pytest.mark.parametrize("resp", AGREEING_MC)
def test_multiple_choice_matches_lmms_eval_extractor(resp):
    ref = mcq.extract_mcq_answer(resp.strip(), LETTERS) or None
    assert metrics.parse_choice(resp, OPTIONS) == ref
    for gt in LETTERS:  # and the realworldqa task's per-item score
        doc = {"answer": gt, "question": ""}
        lm = rwqa_utils.realworldqa_process_results(doc, [resp.strip()])["exact_match"]
        assert metrics.multiple_choice(resp, OPTIONS, gt) == lm


@pytest.mark.parametrize("resp,ours,theirs", DIVERGENT_MC)
def test_multiple_choice_documented_divergences(resp, ours, theirs):
    assert mcq.extract_mcq_answer(resp.strip(), LETTERS) == theirs
    assert metrics.parse_choice(resp, OPTIONS) == ours


def test_bank_size():
    n = (len(VQA_CASES) + len(ANLS_CASES) * 6 + len(EM_CASES) + len(_pope_cases()) + len(AGREEING_MC)
         + len(DIVERGENT_MC))
    assert n >= 200, n
