"""The claims' verdicts (C1-C4, multi-evidence), read from the numbers with their CIs."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import pandas as pd

from .. import synthetic as bench
from .loop import family_of
from .registry import NEUTRAL_BAND, VICROP_METHODS
from .configs import C4_AXES
from .tables import Delta, _family_order, evidence_kind, paired_delta, stopping_table


SUPPORTED, INCONCLUSIVE, NOT_SUPPORTED = "supported", "inconclusive", "not supported"


@dataclass
class Verdict:
    """A claim's status ("supported" / "inconclusive" / "not supported"), the sentence
    stating it with its numbers, and the numbers themselves."""

    claim: str
    status: str
    sentence: str
    numbers: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.sentence

    @property
    def supported(self) -> bool:
        return self.status == SUPPORTED


def _status(d: Delta) -> str:
    if d.n == 0 or not math.isfinite(d.mean):
        return INCONCLUSIVE
    if d.lo > 0:
        return SUPPORTED
    if d.mean > 0:
        return INCONCLUSIVE
    return NOT_SUPPORTED


def verdict_c1(df: pd.DataFrame, method: str = "egg", baseline: str = "base",
               detail: Sequence[str] | None = None, control: str | None = None,
               band: float = NEUTRAL_BAND) -> Verdict:
    """C1: ``method`` beats ``baseline`` on the detail-critical families (pooled paired
    delta; supported if its CI is above 0, inconclusive if positive but the CI includes 0,
    not supported if <= 0) and is about neutral on the control family (CI includes 0 or
    |delta| < ``band`` points; "includes" is strict: [-20, 0] does not). Supported only if both hold; not supported if the detail
    delta is <= 0 or the control effect is clearly non-neutral."""
    fams = _family_order(df)
    if detail is None:  # real benchmarks count by the family they stand for (docvqa -> doc)
        detail = [f for f in fams if family_of(f) in bench.DETAIL_FAMILIES]
    detail = [f for f in detail if f in fams]
    if control is None:
        control = next((f for f in fams if family_of(f) == bench.CONTROL_FAMILY), bench.CONTROL_FAMILY)
    d = paired_delta(df, baseline, method, families=detail) if detail else Delta(math.nan, math.nan, math.nan, 0)
    per = {f: paired_delta(df, baseline, method, families=[f]) for f in detail}
    c = paired_delta(df, baseline, method, families=[control]) if control in fams else None
    detail_status = _status(d)
    neutral = None
    if c is not None and c.n > 0:
        neutral = (c.lo < 0 < c.hi) or abs(c.mean) < band
    if detail_status == NOT_SUPPORTED or neutral is False:
        status = NOT_SUPPORTED
    elif detail_status == SUPPORTED and neutral:
        status = SUPPORTED
    else:
        status = INCONCLUSIVE
    per_txt = ", ".join(f"{f} {x.mean:+.1f}" for f, x in per.items() if x.n)
    n_pos = sum(1 for x in per.values() if x.n and x.mean > 0)
    n_sig = sum(1 for x in per.values() if x.significant_positive)
    s = (f"C1 {status}: {method} - {baseline} on the detail-critical families ({', '.join(detail)}) = "
         f"{d.fmt()} (n = {d.n}; positive on {n_pos} of {len(per)}, CI above 0 on {n_sig}; per family: {per_txt})")
    if c is None or c.n == 0:
        s += f"; control family {control!r} not run, so neutrality is untested."
    else:
        s += (f"; on the control ({control}) {c.fmt()} (n = {c.n}), "
              + ("about neutral" if neutral else "not neutral")
              + f" (neutral = CI strictly includes 0 or |delta| < {band:g} points).")
    return Verdict("C1", status, s, {"detail": asdict(d), "control": asdict(c) if c else None,
                                     "per_family": {f: asdict(x) for f, x in per.items()}})


def verdict_c2(df: pd.DataFrame, method: str = "egg", rivals: Sequence[str] | None = None,
               attention_loss: float = 0.0) -> Verdict:
    """C2: ``method`` localises better than each ViCrop variant: paired delta of IoU (points,
    primary) per rival; supported if every IoU CI is above 0, not supported if any IoU delta
    is <= 0, else inconclusive. Pointing deltas are reported alongside. ``attention_loss`` is the
    weight of a training loss on where the model's answer attends (`trained_attention`): the
    verdict then names it, since it trains the very signal ViCrop's attention variants read."""
    present = set(df["variant"])
    rivals = [r for r in (rivals if rivals is not None else VICROP_METHODS) if r in present]
    if method not in present or not rivals:
        return Verdict("C2", INCONCLUSIVE, f"C2 {INCONCLUSIVE}: need {method!r} and at least one ViCrop variant.")
    ious = {r: paired_delta(df, r, method, value="iou") for r in rivals}
    points = {r: paired_delta(df, r, method, value="pointing") for r in rivals}
    sts = [_status(d) for d in ious.values()]
    status = (NOT_SUPPORTED if NOT_SUPPORTED in sts else SUPPORTED if all(x == SUPPORTED for x in sts)
              else INCONCLUSIVE)
    own = df[df["variant"] == method]
    parts = [f"vs {r}: IoU {ious[r].fmt()}, pointing {points[r].fmt()}" for r in rivals]
    s = (f"C2 {status}: {method} mean IoU {own['iou'].mean() * 100:.1f}, pointing "
         f"{own['pointing'].mean() * 100:.1f} (points, n = {own['iou'].notna().sum()}); "
         f"{method} - ViCrop " + "; ".join(parts) + ".")
    if attention_loss > 0:
        s += (f" The model was trained with a loss pulling its answer's attention onto the named object "
              f"(weight {attention_loss:g}): it trains the attention ViCrop's attention variants read directly, "
              f"and {method}'s gradient only through it.")
    return Verdict("C2", status, s, {"iou": {r: asdict(d) for r, d in ious.items()},
                                     "pointing": {r: asdict(d) for r, d in points.items()}})


def trained_attention(vlm) -> float:
    """The weight of the training loss on where the answer attends (`TrainConfig.look`), from the
    training record beside the weights `vlm` was loaded from; 0 for a model without one (a real VLM)."""
    from ..synthetic.checks import attention_loss, training_record

    return attention_loss(training_record(vlm.source) if getattr(vlm, "source", None) else {})


def verdict_c3(df: pd.DataFrame, rule: str = "spatial-entropy", rules: Sequence[str] | None = None) -> Verdict:
    """C3: the spatial-entropy rule has the best accuracy/cost balance. Supported if it is on
    the Pareto front (no rule is at least as accurate at no higher mean cost, one strictly)
    and no other rule is significantly more accurate (paired CI above 0); not supported if
    another rule dominates it; inconclusive otherwise (a costlier rule is significantly
    more accurate)."""
    t = stopping_table(df, rules)
    if rule not in set(t["rule"]):
        return Verdict("C3", INCONCLUSIVE, f"C3 {INCONCLUSIVE}: rule {rule!r} was not run.")
    me = t[t["rule"] == rule].iloc[0]
    others = t[t["rule"] != rule]
    dominators = [r.rule for r in others.itertuples()
                  if r.accuracy >= me.accuracy and r.cost_fe <= me.cost_fe
                  and (r.accuracy > me.accuracy or r.cost_fe < me.cost_fe)]
    better = {r: paired_delta(df, rule, r) for r in others["rule"]}
    sig_better = [r for r, d in better.items() if d.significant_positive]
    if dominators:
        status = NOT_SUPPORTED
    elif sig_better:
        status = INCONCLUSIVE
    else:
        status = SUPPORTED
    top = t.sort_values(["accuracy", "cost_fe"], ascending=[False, True]).iloc[0]
    s = (f"C3 {status}: {rule} reaches {me.accuracy:.1f} points at {me.cost_fe:.2f} FE per question "
         f"(n = {int(me.n)}, {me.iterations:.2f} zoom iterations on average); ")
    if dominators:
        dm = t[t["rule"].isin(dominators)].sort_values(["accuracy", "cost_fe"], ascending=[False, True]).iloc[0]
        s += (f"dominated by {dm.rule} ({dm.accuracy:.1f} points at {dm.cost_fe:.2f} FE; "
              f"{dm.rule} - {rule} = {better[dm.rule].fmt()})")
    elif round(top.accuracy, 9) <= round(me.accuracy, 9):
        ties = [r.rule for r in others.itertuples() if round(r.accuracy, 9) == round(me.accuracy, 9)]
        s += "the most accurate rule" + (f" (tied with {', '.join(ties)})" if ties else "") + ", on the Pareto front"
    else:
        s += (f"on the Pareto front; the most accurate is {top.rule} ({top.accuracy:.1f} points at "
              f"{top.cost_fe:.2f} FE; {top.rule} - {rule} = {better[top.rule].fmt()})")
    if sig_better and not dominators:
        s += f"; significantly more accurate: {', '.join(sig_better)}"
    s += "."
    return Verdict("C3", status, s, {"table": t.to_dict(orient="records"), "dominated_by": dominators,
                                     "significantly_better": sig_better})


def verdict_c4(table: pd.DataFrame, df: pd.DataFrame | None = None, axes: Sequence[str] = C4_AXES) -> Verdict:
    """C4: the paper's choices (first token, last layer = all layers, k = 2) have the best
    accuracy on their ablation axes (``ablation_table`` rows; ``paper`` marks the choice).
    Per axis: "best" if the paper's value is more accurate than every other value; "tied"
    if it is at least as accurate as all but equal to some; else the best other value is
    compared with the paired delta (``df`` needed; without it, differences count as
    significant). Supported if every axis is best; not supported if on some axis another
    value is significantly better (paired CI above 0); else inconclusive."""
    parts, states = [], {}
    for axis in axes:
        t = table[table["axis"] == axis]
        if t.empty or not t["paper"].any():
            parts.append(f"{axis}: not run")
            states[axis] = "missing"
            continue
        paper = t[t["paper"]].iloc[0]
        others = t[~t["paper"]]
        if others.empty:
            states[axis] = "missing"
            parts.append(f"{axis}: only the paper's value was run")
            continue
        best_other = others.sort_values("accuracy", ascending=False, kind="stable").iloc[0]
        acc_p = round(float(paper.accuracy), 9)
        acc_others = others["accuracy"].astype(float).round(9)
        if (acc_p > acc_others).all():
            states[axis] = "best"
            parts.append(f"{axis}: {paper.value} best ({paper.accuracy:.1f} vs next {best_other.value} "
                         f"{best_other.accuracy:.1f})")
        elif (acc_p >= acc_others).all():
            ties = [str(v) for v, a in zip(others["value"], acc_others) if a == acc_p]
            states[axis] = "tied"
            parts.append(f"{axis}: {paper.value} tied for best with {', '.join(ties)} ({paper.accuracy:.1f})")
        else:
            if df is not None:
                d = paired_delta(df, paper.label, best_other.label)
                sig = d.significant_positive
                txt = f"{best_other.value} - {paper.value} = {d.fmt()}"
            else:
                sig, txt = True, f"{best_other.value} {best_other.accuracy:.1f} vs {paper.value} {paper.accuracy:.1f}"
            states[axis] = "worse-significant" if sig else "worse"
            parts.append(f"{axis}: {best_other.value} beats the paper's {paper.value} ({txt}"
                         + (", significant)" if sig else ", CI includes 0)"))
    vals = list(states.values())
    if "worse-significant" in vals:
        status = NOT_SUPPORTED
    elif vals and all(v == "best" for v in vals):
        status = SUPPORTED
    else:
        status = INCONCLUSIVE
    s = f"C4 {status}: " + "; ".join(parts) + " (accuracy in points)."
    return Verdict("C4", status, s, {"axes": states})


def verdict_multi(df: pd.DataFrame, one: str = "egg k=1", two: str = "egg k=2") -> Verdict:
    """Multi-evidence: k = 2 beats k = 1 on two-box questions (paired delta; supported if
    its CI is above 0, inconclusive if positive, not supported if <= 0); the one-box delta
    is reported for contrast."""
    sub = df.assign(evidence=[evidence_kind(k) for k in df["n_evidence"]])
    d2 = paired_delta(sub[sub["evidence"] == "two boxes"], one, two)
    d1 = paired_delta(sub[sub["evidence"] == "one box"], one, two)
    status = _status(d2)
    s = (f"Multi-evidence {status}: {two} - {one} on two-box questions = {d2.fmt()} (n = {d2.n}), "
         f"on one-box questions = {d1.fmt()} (n = {d1.n}).")
    return Verdict("multi", status, s, {"two": asdict(d2), "one": asdict(d1)})
