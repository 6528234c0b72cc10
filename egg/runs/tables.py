"""Tables from records: accuracy, deltas, localisation, cost, stopping, ablations, multi-evidence."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import metrics, stats
from .. import synthetic as bench
from .loop import family_of
from .registry import BOOT_SEED, N_BOOT, SIZE_BUCKETS


def _order(values: Iterable, preferred: Sequence | None = None) -> list:
    """Unique values in first-seen order (preferred ones first, in their order)."""
    seen = list(dict.fromkeys(values))
    if preferred:
        return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]
    return seen


def _family_order(df) -> list[str]:
    return _order(df["family"], bench.families())


def size_bucket(fraction: float) -> str:
    for name, lo, hi in SIZE_BUCKETS:
        if lo <= fraction < hi:
            return name
    return SIZE_BUCKETS[-1][0]


def _paired(df: pd.DataFrame, a: str, b: str, value: str = "score", families=None) -> pd.DataFrame:
    """Items scored by both variants a and b: columns a, b (values), a_correct, b_correct."""
    sub = df if families is None else df[df["family"].isin(list(families))]
    cols = ["family", "index", value, "correct"]
    x = sub[sub["variant"] == a][cols].rename(columns={value: "a", "correct": "a_correct"})
    y = sub[sub["variant"] == b][cols].rename(columns={value: "b", "correct": "b_correct"})
    m = x.merge(y, on=["family", "index"], how="inner")
    return m.dropna(subset=["a", "b"])


@dataclass
class Delta:
    """b - a over paired items, in points (x100 for scores) with a 95 % bootstrap CI."""

    mean: float
    lo: float
    hi: float
    n: int
    p: float = math.nan
    a: float = math.nan
    b: float = math.nan

    def fmt(self, unit: str = " points", digits: int = 1) -> str:
        if self.n == 0:
            return "n/a (no paired items)"
        return f"{self.mean:+.{digits}f}{unit} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"

    @property
    def significant_positive(self) -> bool:
        return self.n > 0 and self.lo > 0

    @property
    def significant_negative(self) -> bool:
        return self.n > 0 and self.hi < 0


def paired_delta(df: pd.DataFrame, a: str, b: str, value: str = "score", families=None,
                 scale: float = 100.0) -> Delta:
    """Mean of (b - a) over items both variants have (``value`` column), with a paired
    bootstrap CI and (for value == "score") McNemar's p on ``correct``."""
    m = _paired(df, a, b, value, families)
    if len(m) == 0:
        return Delta(math.nan, math.nan, math.nan, 0)
    mean, lo, hi = stats.paired_bootstrap(m["a"].to_numpy(float), m["b"].to_numpy(float), n_boot=N_BOOT,
                                          seed=BOOT_SEED)
    p = stats.mcnemar(m["a_correct"].to_numpy(bool), m["b_correct"].to_numpy(bool)) if value == "score" else math.nan
    return Delta(mean * scale, lo * scale, hi * scale, len(m), p, float(m["a"].mean()) * scale,
                 float(m["b"].mean()) * scale)


def _ci(x, scale: float = 100.0) -> tuple[float, float, float]:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m, lo, hi = stats.bootstrap_ci(x, n_boot=N_BOOT, seed=BOOT_SEED)
    return m * scale, lo * scale, hi * scale


def accuracy_table(df: pd.DataFrame, families: Sequence[str] | None = None) -> pd.DataFrame:
    """Method (rows) x family (columns): mean score in points (POPE: accuracy), plus a
    "pope F1" column (``metrics.pope``, points) when POPE is present. Like the paper's
    Table 1."""
    fams = list(families) if families is not None else _family_order(df)
    variants = _order(df["variant"])
    t = (df[df["family"].isin(fams)].groupby(["variant", "family"])["score"].mean() * 100).unstack("family")
    t = t.reindex(index=variants, columns=fams)
    if "pope" in fams:
        f1 = {}
        for v in variants:
            sub = df[(df["variant"] == v) & (df["family"] == "pope")]
            f1[v] = (metrics.pope(list(sub["prediction"]), [a[0] for a in sub["answers"]])["f1"] * 100
                     if len(sub) else math.nan)
        t["pope F1"] = pd.Series(f1)
    t.index.name = "method"
    t.columns.name = None
    return t


def delta_table(df: pd.DataFrame, baseline: str = "base", pooled: Mapping[str, Sequence[str]] | None = None,
                methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Per method and family: accuracy of the baseline and the method, delta (points) with
    a paired 95 % bootstrap CI, McNemar p-value and n. ``pooled`` adds rows over groups
    of families (default: "detail (pooled)" = the detail-critical families present)."""
    fams = _family_order(df)
    if pooled is None:
        detail = [f for f in fams if family_of(f) in bench.DETAIL_FAMILIES]
        pooled = {"detail (pooled)": detail} if len(detail) > 1 else {}
    groups = [(f, [f]) for f in fams] + [(k, list(v)) for k, v in pooled.items()]
    rows = []
    for v in (methods or [x for x in _order(df["variant"]) if x != baseline]):
        for name, fs in groups:
            d = paired_delta(df, baseline, v, families=fs)
            if d.n == 0:
                continue
            rows.append({"method": v, "family": name, "n": d.n, baseline: d.a, "accuracy": d.b, "delta": d.mean,
                         "ci_lo": d.lo, "ci_hi": d.hi, "p_mcnemar": d.p})
    return pd.DataFrame(rows, columns=["method", "family", "n", baseline, "accuracy", "delta", "ci_lo", "ci_hi",
                                       "p_mcnemar"])


def delta_summary(dt: pd.DataFrame) -> pd.DataFrame:
    """A ``delta_table`` as method x family strings "+3.0 [-1.2, 7.5] p=0.21" for display."""
    if dt.empty:
        return pd.DataFrame()
    s = dt.assign(cell=[f"{r.delta:+.1f} [{r.ci_lo:+.1f}, {r.ci_hi:+.1f}] p={r.p_mcnemar:.2f}"
                        for r in dt.itertuples()])
    t = s.pivot(index="method", columns="family", values="cell")
    t = t.reindex(index=_order(dt["method"]), columns=_order(dt["family"]))
    t.columns.name = None
    return t


def localisation_table(df: pd.DataFrame, methods: Sequence[str] | None = None, overall: bool = True) -> pd.DataFrame:
    """IoU and pointing accuracy (points, with 95 % bootstrap CIs) by method and evidence
    size bucket (``SIZE_BUCKETS``; "all" = every bucket). Methods without boxes are left out."""
    sub = df[np.isfinite(df["iou"].to_numpy(float))].copy()
    if methods is not None:
        sub = sub[sub["variant"].isin(list(methods))]
    sub["bucket"] = [size_bucket(f) for f in sub["evidence_fraction"]]
    buckets = [b[0] for b in SIZE_BUCKETS] + (["all"] if overall else [])
    rows = []
    for v in _order(sub["variant"], methods):
        for b in buckets:
            s = sub[sub["variant"] == v] if b == "all" else sub[(sub["variant"] == v) & (sub["bucket"] == b)]
            if len(s) == 0:
                continue
            i, ilo, ihi = _ci(s["iou"])
            p, plo, phi = _ci(s["pointing"])
            rows.append({"method": v, "bucket": b, "n": len(s), "iou": i, "iou_lo": ilo, "iou_hi": ihi,
                         "pointing": p, "pointing_lo": plo, "pointing_hi": phi})
    return pd.DataFrame(rows, columns=["method", "bucket", "n", "iou", "iou_lo", "iou_hi", "pointing",
                                       "pointing_lo", "pointing_hi"])


def bucket_legend() -> str:
    """The bucket thresholds, in words."""
    parts = []
    for name, lo, hi in SIZE_BUCKETS:
        if lo == 0:
            parts.append(f"{name} < {hi * 100:g} %")
        elif math.isinf(hi):
            parts.append(f"{name} >= {lo * 100:g} %")
        else:
            parts.append(f"{name} {lo * 100:g}-{hi * 100:g} %")
    return "evidence area / image area: " + ", ".join(parts)


def cost_table(df: pd.DataFrame, baseline: str | None = "base", seconds: bool = False) -> pd.DataFrame:
    """Mean cost per question by method: forward, backward passes, images encoded, decoded
    tokens, forward-equivalents (FE = forward + 2 x backward), FE relative to the baseline,
    zoom iterations. ``seconds`` adds mean wall time (not reproducible: keep it to files)."""
    cols = ["forward", "backward", "images_encoded", "generated_tokens", "cost_fe", "iterations"]
    if seconds:
        cols.append("seconds")
    t = df.groupby("variant")[cols].mean().reindex(_order(df["variant"]))
    if baseline is not None and baseline in t.index and t.loc[baseline, "cost_fe"] > 0:
        t.insert(5, "fe_vs_" + baseline, t["cost_fe"] / t.loc[baseline, "cost_fe"])
    t.index.name = "method"
    return t


def pareto_front(acc: Sequence[float], cost: Sequence[float]) -> list[bool]:
    """True for points no other point dominates (accuracy >= and cost <=, one strictly)."""
    acc, cost = list(acc), list(cost)
    out = []
    for i in range(len(acc)):
        dom = any(acc[j] >= acc[i] and cost[j] <= cost[i] and (acc[j] > acc[i] or cost[j] < cost[i])
                  for j in range(len(acc)) if j != i)
        out.append(not dom)
    return out


def stopping_table(df: pd.DataFrame, rules: Sequence[str] | None = None) -> pd.DataFrame:
    """Accuracy (points, 95 % CI) against mean cost (FE) and zoom iterations per
    configuration (stopping rule), with a Pareto-front flag (accuracy up, cost down)."""
    rows = []
    for v in _order(df["variant"], rules):
        if rules is not None and v not in rules:
            continue
        s = df[df["variant"] == v]
        a, lo, hi = _ci(s["score"])
        rows.append({"rule": v, "n": len(s), "accuracy": a, "acc_lo": lo, "acc_hi": hi,
                     "cost_fe": float(s["cost_fe"].mean()), "iterations": float(s["iterations"].mean()),
                     "state_used": float(s["best_index"].mean())})
    t = pd.DataFrame(rows, columns=["rule", "n", "accuracy", "acc_lo", "acc_hi", "cost_fe", "iterations",
                                    "state_used"])
    t["pareto"] = pareto_front(t["accuracy"].round(9), t["cost_fe"].round(9))
    return t


def reference_point(df: pd.DataFrame, variant: str = "base", label: str | None = None) -> dict:
    """{"label", "accuracy" (points), "cost_fe"} of one configuration, for ``plots.cost_accuracy``."""
    s = df[df["variant"] == variant]
    return {"label": label or variant, "accuracy": float(s["score"].mean() * 100), "cost_fe": float(s["cost_fe"].mean()),
            "n": int(len(s))}


# ----------------------------------------------------------------- stopping-rule configurations


# ----------------------------------------------------------------- ablation configurations


def ablation_table(df: pd.DataFrame, axes: Mapping[str, Sequence], default: str = "default") -> pd.DataFrame:
    """One row per (axis, value): accuracy (points), delta vs the default with a paired
    95 % CI, mean IoU / pointing (points), mean cost (FE); ``paper`` marks the paper's choice."""
    rows = []
    for axis, vals in axes.items():
        for value, label in vals:
            s = df[df["variant"] == label]
            if len(s) == 0:
                continue
            d = paired_delta(df, default, label)
            rows.append({"axis": axis, "value": str(value), "label": label, "paper": label == default,
                         "n": len(s), "accuracy": float(s["score"].mean() * 100), "delta": d.mean,
                         "ci_lo": d.lo, "ci_hi": d.hi, "iou": float(s["iou"].mean() * 100),
                         "pointing": float(s["pointing"].mean() * 100), "cost_fe": float(s["cost_fe"].mean())})
    return pd.DataFrame(rows, columns=["axis", "value", "label", "paper", "n", "accuracy", "delta", "ci_lo",
                                       "ci_hi", "iou", "pointing", "cost_fe"])


# ----------------------------------------------------------------- multi-evidence


def evidence_kind(n_evidence: int) -> str:
    return "one box" if n_evidence <= 1 else "two boxes" if n_evidence == 2 else f"{n_evidence} boxes"


def multi_evidence_table(df: pd.DataFrame) -> pd.DataFrame:
    """By evidence count (one box / two boxes) and method: n, accuracy (points, 95 % CI),
    evidence recall (share of gt boxes whose centre lies in one of the method's boxes,
    points), IoU of the first box (points)."""
    sub = df.assign(evidence=[evidence_kind(k) for k in df["n_evidence"]])
    rows = []
    for e in _order(sub["evidence"], ["one box", "two boxes"]):
        for v in _order(sub["variant"]):
            s = sub[(sub["evidence"] == e) & (sub["variant"] == v)]
            if len(s) == 0:
                continue
            a, lo, hi = _ci(s["score"])
            rows.append({"evidence": e, "method": v, "n": len(s), "accuracy": a, "acc_lo": lo, "acc_hi": hi,
                         "evidence_recall": float(s["evidence_recall"].mean() * 100),
                         "iou": float(s["iou"].mean() * 100), "n_boxes": float(s["boxes"].map(len).mean())})
    return pd.DataFrame(rows, columns=["evidence", "method", "n", "accuracy", "acc_lo", "acc_hi",
                                       "evidence_recall", "iou", "n_boxes"])


def headline(df: pd.DataFrame, baseline: str = "base", methods: Sequence[str] | None = None) -> str:
    """The README's headline table (markdown): per method, accuracy pooled over the
    detail-critical families present and its paired difference to ``baseline`` with a 95%
    bootstrap CI, and the n behind them. Notebook 02 prints it; a test checks that the README
    carries exactly this text."""
    fams = [f for f in _family_order(df) if family_of(f) in bench.DETAIL_FAMILIES]
    methods = [m for m in (methods or _order(df["variant"])) if m != baseline]
    per_family = df[df["family"].isin(fams)].groupby(["variant", "family"]).size().unstack().max()
    lines = [f"| method | accuracy, points | vs {baseline}, points [95% paired CI] | McNemar p |", "|---|---|---|---|"]
    base = paired_delta(df, baseline, baseline, families=fams)
    lines.append(f"| {baseline} | {base.b:.1f} | | |")
    n = 0
    for m in methods:
        d = paired_delta(df, baseline, m, families=fams)
        lines.append(f"| {m} | {d.b:.1f} | {d.fmt()} | {d.p:.2f} |")
        n = n or int(d.n)
    lines.append("")
    lines.append(f"n = {n} paired items: {', '.join(f'{f} {int(per_family[f])}' for f in fams)} "
                 f"(the detail-critical families, pooled).")
    return "\n".join(lines)
