"""Benchmark scoring functions that reproduce lmms-eval's numbers.

Every function here mirrors the scoring path that lmms-eval (0.7.x) applies to a
single model response, quirks included, so that numbers computed by ``egg`` are
directly comparable with numbers reported through lmms-eval:

* :func:`normalize_vqa_answer` / :func:`vqa_accuracy` -- the EvalAI / official VQA
  answer normalisation and the 10-annotator leave-one-out accuracy (TextVQA, VQAv2).
* :func:`anls` -- DocVQA / InfoVQA average normalised Levenshtein similarity.
* :func:`pope` -- POPE accuracy / precision / recall / F1 / yes-ratio.
* :func:`multiple_choice` -- letter-or-option-text multiple-choice scoring.
* :func:`exact_match` -- GQA-style exact match (case and punctuation ignored).

Known lmms-eval quirks that are reproduced on purpose are noted in each docstring.
"""

from __future__ import annotations

import re
import string
from typing import Sequence

__all__ = [
    "normalize_vqa_answer",
    "vqa_accuracy",
    "levenshtein",
    "anls",
    "parse_yes_no",
    "pope",
    "parse_choice",
    "multiple_choice",
    "exact_match",
    "item_score",
]

# ---------------------------------------------------------------------------
# VQA normalisation (EvalAI / official VQA evaluation)
# ---------------------------------------------------------------------------

# "missing apostrophe" -> "with apostrophe".  Only keys that can actually match a
# lower-cased token are kept: the reference table also lists "Im", "Ive", "Id've"
# and "I'dve", which can never fire because tokens are lower-cased first.
# "somebody'd" -> "somebodyd" is a typo in the reference table, kept for parity.
_CONTRACTION_PAIRS = """
aint ain't | arent aren't | cant can't | couldve could've | couldnt couldn't
couldn'tve couldn't've | couldnt've couldn't've | didnt didn't | doesnt doesn't
dont don't | hadnt hadn't | hadnt've hadn't've | hadn'tve hadn't've | hasnt hasn't
havent haven't | hed he'd | hed've he'd've | he'dve he'd've | hes he's
howd how'd | howll how'll | hows how's | isnt isn't | itd it'd | itd've it'd've
it'dve it'd've | itll it'll | let's let's | maam ma'am | mightnt mightn't
mightnt've mightn't've | mightn'tve mightn't've | mightve might've
mustnt mustn't | mustve must've | neednt needn't | notve not've | oclock o'clock
oughtnt oughtn't | ow's'at 'ow's'at | 'ows'at 'ow's'at | 'ow'sat 'ow's'at
shant shan't | shed've she'd've | she'dve she'd've | she's she's
shouldve should've | shouldnt shouldn't | shouldnt've shouldn't've
shouldn'tve shouldn't've | somebody'd somebodyd | somebodyd've somebody'd've
somebody'dve somebody'd've | somebodyll somebody'll | somebodys somebody's
someoned someone'd | someoned've someone'd've | someone'dve someone'd've
someonell someone'll | someones someone's | somethingd something'd
somethingd've something'd've | something'dve something'd've
somethingll something'll | thats that's | thered there'd | thered've there'd've
there'dve there'd've | therere there're | theres there's | theyd they'd
theyd've they'd've | they'dve they'd've | theyll they'll | theyre they're
theyve they've | twas 'twas | wasnt wasn't | wed've we'd've | we'dve we'd've
weve we've | werent weren't | whatll what'll | whatre what're | whats what's
whatve what've | whens when's | whered where'd | wheres where's
whereve where've | whod who'd | whod've who'd've | who'dve who'd've
wholl who'll | whos who's | whove who've | whyll why'll | whyre why're
whys why's | wont won't | wouldve would've | wouldnt wouldn't
wouldnt've wouldn't've | wouldn'tve wouldn't've | yall y'all | yall'll y'all'll
y'allll y'all'll | yall'd've y'all'd've | y'alld've y'all'd've
y'all'dve y'all'd've | youd you'd | youd've you'd've | you'dve you'd've
youll you'll | youre you're | youve you've
"""
CONTRACTIONS: dict[str, str] = dict(
    pair.split() for pair in _CONTRACTION_PAIRS.replace("\n", " | ").split("|") if pair.strip()
)

NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    **{w: str(i) for i, w in enumerate("one two three four five six seven eight nine ten".split(), 1)},
}
ARTICLES = frozenset({"a", "an", "the"})

# Punctuation that is deleted (if touching a space, or if the text has a
# digit,digit group) or otherwise turned into a space.  "." and "'" and ":" are
# not in this list: "." has its own rule, the others survive.
_PUNCT = ";/[]\"{}()=+\\_-><@`,?!"
# The reference pattern is r"(?!<=\d)(\.)(?!\d)": the first group is a typo for a
# look-behind and is a no-op look-ahead, so in effect every "." that is not
# followed by a digit is removed ("3.5" survives, "a.m." -> "am", ".5" survives).
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
# The reference passes re.UNICODE (== 32) positionally as ``count`` to re.sub, so
# at most 32 periods are stripped; reproduced for parity.
_PERIOD_STRIP_COUNT = int(re.UNICODE)
_COMMA_IN_NUMBER = re.compile(r"(?<=\d),+(?=\d)")


def _process_punctuation(text: str) -> str:
    """EvalAI punctuation rule.

    A mark touching a space is deleted, otherwise it becomes a space (so
    "red/blue" -> "red blue" but "red / blue" -> "red  blue").  If the text has a
    thousands separator ("1,000") every mark is deleted instead.  The conditions
    are always evaluated on the *input* text, not the partially edited one.
    """
    delete_all = _COMMA_IN_NUMBER.search(text) is not None
    out = text
    for p in _PUNCT:
        if delete_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """Lower-case, map number words to digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_vqa_answer(s: str) -> str:
    """Normalise a VQA answer like EvalAI's ``EvalAIAnswerProcessor.__call__``.

    Steps (order matters): lower-case; delete "," and "?"; split possessive "'s"
    into " 's"; newlines/tabs -> spaces; punctuation rule; period rule; number
    words -> digits; drop articles; restore contractions ("dont" -> "don't").
    Because commas are deleted first, "1,000" -> "1000" and "red,blue" -> "redblue".
    """
    s = s.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    s = s.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(s))


def _normalize_vqav2(s: str) -> str:
    """The lighter normalisation used by lmms-eval's VQAv2 task (and the official
    VQA script): whitespace cleanup, punctuation rule, digits/articles -- no
    up-front comma/"?" deletion and no possessive split."""
    s = s.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(s))


def vqa_accuracy(prediction: str, answers: Sequence[str], *, style: str = "textvqa") -> float:
    """Official VQA accuracy: mean over leave-one-out subsets of min(1, #matches / 3).

    For each of the n ground-truth answers, that answer is held out and the
    prediction scores min(1, k/3) where k counts matching answers among the other
    n-1; the n scores are averaged.  With 10 answers: 1 agreeing annotator -> 0.3,
    2 -> 0.6, 3 -> 0.9, >=4 -> 1.0.

    Like lmms-eval, no special case is made for n < 10: the average simply runs
    over n subsets, so a single ground-truth answer always scores 0.0 (the only
    subset is empty).  An empty answer list scores 0.0 (lmms-eval would raise).

    ``style="textvqa"`` (default) normalises both sides with
    :func:`normalize_vqa_answer` as lmms-eval's TextVQA task does;
    ``style="vqav2"`` uses the lighter normalisation of its VQAv2 task.
    """
    if style == "textvqa":
        norm = normalize_vqa_answer
    elif style == "vqav2":
        norm = _normalize_vqav2
    else:
        raise ValueError(f"unknown style {style!r}; expected 'textvqa' or 'vqav2'")
    answers = list(answers)
    if not answers:
        return 0.0
    pred = norm(prediction)
    gts = [norm(a) for a in answers]
    total_matches = sum(g == pred for g in gts)
    scores = []
    for g in gts:
        others = total_matches - (g == pred)  # matches among the other n-1 answers
        scores.append(min(1.0, others / 3))
    return sum(scores) / len(scores)


# ---------------------------------------------------------------------------
# ANLS (DocVQA / InfoVQA)
# ---------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Character edit distance (insert / delete / substitute, unit costs)."""
    if len(a) > len(b):
        a, b = b, a
    prev = list(range(len(a) + 1))
    for j, cb in enumerate(b, 1):
        cur = [j]
        for i, ca in enumerate(a, 1):
            cur.append(prev[i - 1] if ca == cb else 1 + min(prev[i - 1], prev[i], cur[-1]))
        prev = cur
    return prev[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity for one question, as lmms-eval.

    Both strings are stripped, lower-cased and have whitespace runs collapsed
    before the edit distance is taken; the best (max) similarity over the
    answers is kept and set to 0 if it is strictly below ``threshold`` (so a
    similarity of exactly 0.5 survives).

    lmms-eval quirk reproduced: the distance is normalised by the length of the
    *un-normalised* strings (the prediction after lmms-eval's own ``strip()``,
    the answer as given), not of the normalised ones.
    """
    pred = prediction.strip()  # lmms-eval strips every generation before scoring
    pred_norm = " ".join(pred.lower().split())
    best = None
    for ans in answers:
        ans_norm = " ".join(ans.strip().lower().split())
        length = max(len(ans.upper()), len(pred.upper()))
        dist = 0.0 if length == 0 else levenshtein(ans_norm, pred_norm) / length
        best = dist if best is None else min(best, dist)
    if best is None:
        return 0.0
    score = 1.0 - best
    return 0.0 if score < threshold else score


# ---------------------------------------------------------------------------
# POPE
# ---------------------------------------------------------------------------


def parse_yes_no(prediction: str) -> str:
    """lmms-eval's POPE parsing: lower-case and strip, nothing more.

    Only an exact "yes" or "no" counts; anything else ("Yes.", "Yes, there is")
    is kept verbatim and is wrong for accuracy and ignored by precision/recall,
    exactly as in lmms-eval (its prompts ask for a single word).
    """
    return prediction.lower().strip()


def pope(predictions: Sequence[str], labels: Sequence[str]) -> dict:
    """POPE metrics, aggregated as lmms-eval's ``pope_aggregate_*`` functions.

    * accuracy: fraction with parsed prediction == label;
    * precision: TP / (TP + FP) where only predictions parsed as exactly "yes" count;
    * recall: TP / (TP + FN) where FN needs the prediction to be exactly "no"
      (unparseable answers to "yes" items are left out of the denominator);
    * f1: harmonic mean of the two (0 when both are 0);
    * yes_ratio: lmms-eval computes this from the *labels* (fraction of "yes"
      ground truths), not from the predictions; kept for parity.  The ratio of
      "yes" *predictions* (what the POPE paper reports) is ``pred_yes_ratio``.
    """
    preds = [parse_yes_no(p) for p in predictions]
    gts = [g.lower().strip() for g in labels]
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions but {len(gts)} labels")
    bad = sorted({g for g in gts if g not in ("yes", "no")})
    if bad:
        raise ValueError(f"POPE labels must be 'yes' or 'no', got {bad}")
    n = len(gts)
    tp = sum(p == "yes" and g == "yes" for p, g in zip(preds, gts))
    fp = sum(p == "yes" and g == "no" for p, g in zip(preds, gts))
    fn = sum(p == "no" and g == "yes" for p, g in zip(preds, gts))
    correct = sum(p == g for p, g in zip(preds, gts))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": correct / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(g == "yes" for g in gts) / n if n else 0.0,
        "pred_yes_ratio": sum(p == "yes" for p in preds) / n if n else 0.0,
    }


# ---------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------

# Phrases after which a choice letter is expected (subset of lmms-eval's
# mcq_extract list, matched case-insensitively here).
# A lower-case letter must stand alone ("answer is b", "answer: (b).") so that the
# article in "the answer is a dog" is not read as option A.
_ANSWER_PHRASE = re.compile(
    r"\b(?i:answer|option|choice)\b\s*(?i:is\b)?\s*:?\s*"
    r"(?:\(\s*([A-Za-z])\s*\)|([A-Z])(?![A-Za-z])|([a-z])(?=\s*(?:$|[^\w\s])))"
)
_EDGE_PUNCT = string.punctuation + " \t\n"
# lmms-eval's mcq_extract format priorities (higher wins; later position breaks ties).
_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "paren": 6, "period": 5, "colon": 4, "rparen": 3, "space": 2}


def _norm_text(s: str) -> str:
    return " ".join(s.lower().strip(_EDGE_PUNCT).split())


def _strip_article(s: str) -> str:
    head, _, tail = s.partition(" ")
    return tail if head in ARTICLES and tail else s


def _extract_letter(text: str, letters: list[str]) -> str | None:
    """Upper-case letter extraction following lmms-eval's ``extract_mcq_answer``
    (start > end > answer phrase > "(B)" > "B." > "B:" > "B)" > "B "), without its
    any-occurrence fallback (which would read "Dog" as "D")."""
    t = text.strip()
    for ch in ",.!?;:'\"":
        t = t.strip(ch)
    padded = " " + t + " "
    core = t.strip()
    cands: list[tuple[int, int, str]] = []
    for ch in letters:
        for fmt, pat in (("paren", f"({ch})"), ("period", f"{ch}."), ("colon", f"{ch}:"),
                         ("rparen", f"{ch})"), ("space", f"{ch} ")):
            pos = padded.rfind(pat)
            # require a non-letter before the letter, so "LED." is not read as "D."
            if pos != -1 and (fmt == "paren" or not padded[pos - 1].isalpha()):
                cands.append((_PRIORITY[fmt], pos, ch))
        if core.startswith(ch) and (len(core) == 1 or not core[1].isalpha()):
            cands.append((_PRIORITY["start"], 0, ch))
        if core.endswith(ch) and (len(core) == 1 or not core[-2].isalpha()):
            cands.append((_PRIORITY["end"], len(padded) - 1, ch))
    for m in _ANSWER_PHRASE.finditer(t):
        g = next(i for i in (1, 2, 3) if m.group(i))
        ch = m.group(g).upper()
        if ch in letters:
            cands.append((_PRIORITY["phrase"], m.start(g) + 1, ch))
    if not cands:
        return None
    return max(cands)[2]


def parse_choice(prediction: str, options: Sequence[str]) -> str | None:
    """Map a free-form response to an option letter ("A", "B", ...) or None.

    In order: (1) the whole response is a letter, optionally bracketed or
    punctuated ("b", "(B)", "B."), case-insensitive; (2) the whole response is
    an option's text, optionally with a leading article ("star", "A star");
    (3) letter extraction in the style of lmms-eval's ``extract_mcq_answer``
    ("B. star", "The answer is B", "the answer is (b)"); (4) exactly one option
    text (or the longest of nested ones, "dark red" over "red") occurs in the
    response as whole words.  Ambiguous responses give None.
    """
    letters = [chr(ord("A") + i) for i in range(len(options))]
    text = prediction.strip()
    if not text:
        return None
    bare = text.strip(_EDGE_PUNCT)
    if len(bare) == 1 and bare.upper() in letters:
        return bare.upper()

    norm_opts = [_norm_text(o) for o in options]
    resp = _norm_text(text)
    for variant in (resp, _strip_article(resp)):
        hits = [letters[i] for i, o in enumerate(norm_opts) if o and o == variant]
        if len(hits) == 1:
            return hits[0]
        if hits:
            return None  # duplicate option texts: ambiguous

    letter = _extract_letter(text, letters)
    if letter is not None:
        return letter

    found = [(i, o) for i, o in enumerate(norm_opts)
             if o and re.search(r"(?<!\w)" + re.escape(o) + r"(?!\w)", resp)]
    # drop options contained in a longer matching option ("red" inside "dark red")
    found = [(i, o) for i, o in found
             if not any(o != o2 and re.search(r"(?<!\w)" + re.escape(o) + r"(?!\w)", o2) for _, o2 in found)]
    if len({o for _, o in found}) == 1 and len(found) == 1:
        return letters[found[0][0]]
    return None


def multiple_choice(prediction: str, options: Sequence[str], answer: str) -> float:
    """1.0 if the parsed prediction (see :func:`parse_choice`) is the answer letter.

    ``answer`` is the correct letter ("B", "(b)" and "B." are accepted); an
    answer that is instead one of the option texts is mapped to its letter.
    """
    ans = answer.strip().strip(_EDGE_PUNCT).upper()
    if not (len(ans) == 1 and ans.isalpha()):
        norm_opts = [_norm_text(o) for o in options]
        target = _norm_text(answer)
        if target in norm_opts:
            ans = chr(ord("A") + norm_opts.index(target))
    return 1.0 if parse_choice(prediction, options) == ans else 0.0


# ---------------------------------------------------------------------------
# Exact match (GQA)
# ---------------------------------------------------------------------------

_DROP_PUNCT = str.maketrans("", "", string.punctuation)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """GQA exact match as lmms-eval computes it (``exact_match`` metric with
    ``ignore_case`` and ``ignore_punctuation``): the generation is stripped,
    then both sides are lower-cased and every ASCII punctuation character is
    deleted (so a trailing period, "t-shirt" vs "tshirt" and "yes." all match).
    Any matching answer gives 1.0.  Answers are not stripped, as in lmms-eval.
    """
    pred = prediction.strip().lower().translate(_DROP_PUNCT)
    return 1.0 if any(pred == a.lower().translate(_DROP_PUNCT) for a in answers) else 0.0


def item_score(metric: str, prediction: str, item) -> float:
    """One item's score with the metric named ``metric`` ("vqa_accuracy", "anls",
    "multiple_choice", "exact_match"), reading ``item.answers`` / ``item.options``: the
    dispatch shared by the procedural families and the real benchmarks."""
    if metric == "vqa_accuracy":
        return vqa_accuracy(prediction, item.answers)
    if metric == "anls":
        return anls(prediction, item.answers)
    if metric == "multiple_choice":
        return multiple_choice(prediction, item.options, item.answers[0])
    if metric == "exact_match":
        return exact_match(prediction, item.answers)
    raise ValueError(f"unknown metric {metric!r}")
