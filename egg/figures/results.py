"""Figures for notebooks 02-06 (seaborn style; every function returns a matplotlib Figure).

Figures are built with ``matplotlib.figure.Figure`` (not pyplot), so a notebook shows a
figure once, where it displays it, and nothing is left open. Error bars are the 95 %
bootstrap intervals of ``egg.experiments`` (``egg.stats``, fixed seed), so a figure shows
the same intervals as the tables next to it.

>>> fig = plots.main_results(df)
>>> plots.save_figure(fig, "02_main_results")      # figures/02_main_results.png + .pdf
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import pandas as pd

from .. import runs as ex
from ..runs.tables import _ci, _family_order, _order
from .base import save_figure  # noqa: F401  (notebooks call plots.save_figure)


@contextmanager
def _style():
    import matplotlib as mpl
    import seaborn as sns

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85), \
            mpl.rc_context({"svg.hashsalt": "egg", "pdf.fonttype": 42}):
        yield


def _figure(nrows: int = 1, ncols: int = 1, width: float = 8.0, height: float = 4.0, **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _freeze(fig):
    """Run the constrained layout once, then fix it: every later render (the notebook's
    PNG, each savefig) draws the same geometry, so saving twice gives the same bytes."""
    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    return fig


#: Fixed colours for the methods every results figure shows: EGG stands out (vermillion),
#: the ViCrop variants share a hue (blues), and the bounds are greys (random light, oracle
#: near-black), so no two of them read alike.
METHOD_COLOURS = {
    "base": "#8c8c8c", "vicrop-rel-att": "#9ecae1", "vicrop-grad-att": "#4292c6", "vicrop-pure-grad": "#08519c",
    "egg": "#d55e00", "random": "#d9d9d9", "oracle": "#252525",
}


def _palette(labels: Sequence[str]) -> dict:
    """A colour per label: ``METHOD_COLOURS`` for the methods, the colour-blind palette for
    anything else, without its vermillion (EGG's) and its yellow (unreadable as label text)."""
    import seaborn as sns

    cols = [c for i, c in enumerate(sns.color_palette("colorblind", 10)) if i not in (3, 8)]
    others = [lab for lab in labels if lab not in METHOD_COLOURS]
    return {lab: METHOD_COLOURS.get(lab) or cols[others.index(lab) % len(cols)] for lab in labels}


def _grouped_bars(ax, table: pd.DataFrame, x: str, hue: str, y: str, lo: str | None = None,
                  hi: str | None = None, x_order: Sequence | None = None, hue_order: Sequence | None = None,
                  palette: dict | None = None, width: float = 0.8, legend: bool = True) -> None:
    """Bars of ``table[y]`` grouped by ``x`` and coloured by ``hue``, error bars [lo, hi]."""
    xs = list(x_order) if x_order is not None else list(dict.fromkeys(table[x]))
    hs = list(hue_order) if hue_order is not None else list(dict.fromkeys(table[hue]))
    palette = palette or _palette(hs)
    w = width / max(1, len(hs))
    for j, h in enumerate(hs):
        pos, val, err_lo, err_hi = [], [], [], []
        for i, xv in enumerate(xs):
            r = table[(table[x] == xv) & (table[hue] == h)]
            if r.empty:
                continue
            r = r.iloc[0]
            v = float(r[y])
            pos.append(i - width / 2 + (j + 0.5) * w)
            val.append(v if math.isfinite(v) else 0.0)
            if lo is not None and hi is not None and math.isfinite(float(r[lo])) and math.isfinite(float(r[hi])):
                err_lo.append(max(0.0, v - float(r[lo])))
                err_hi.append(max(0.0, float(r[hi]) - v))
            else:
                err_lo.append(0.0)
                err_hi.append(0.0)
        if not pos:
            continue
        ax.bar(pos, val, width=w * 0.95, color=palette[h], label=str(h), edgecolor="white", linewidth=0.5)
        # a dot at each bar's top: a bar of height 0 stays visible
        ax.scatter(pos, val, color=palette[h], s=9, zorder=3, edgecolors="0.3", linewidths=0.4)
        if lo is not None:
            ax.errorbar(pos, val, yerr=[err_lo, err_hi], fmt="none", ecolor="0.2", elinewidth=0.8, capsize=2)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([str(v) for v in xs])
    ax.set_xlim(-0.6, len(xs) - 0.4)
    if legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


# =========================================================================== 02


def accuracy_long(df: pd.DataFrame) -> pd.DataFrame:
    """Family x method accuracy (points) with 95 % bootstrap CIs, one row each."""
    rows = []
    for (v, f), s in df.groupby(["variant", "family"], sort=False):
        m, lo, hi = _ci(s["score"])
        rows.append({"method": v, "family": f, "accuracy": m, "lo": lo, "hi": hi, "n": len(s)})
    return pd.DataFrame(rows, columns=["method", "family", "accuracy", "lo", "hi", "n"])


def main_results(df: pd.DataFrame, baseline: str = "base", methods: Sequence[str] | None = None):
    """(top) accuracy by family and method with 95 % CIs; (bottom) each method's paired
    delta vs ``baseline`` with its 95 % CI, per family and pooled over detail families."""
    methods = list(methods) if methods is not None else _order(df["variant"])
    fams = _family_order(df)
    acc = accuracy_long(df[df["variant"].isin(methods)])
    dt = ex.delta_table(df[df["variant"].isin(methods)], baseline=baseline)
    pal = _palette(methods)
    with _style():
        fig, axes = _figure(2, 1, width=max(8.0, 1.3 * len(fams) + 3), height=7.5)
        ax = axes[0, 0]
        _grouped_bars(ax, acc, "family", "method", "accuracy", "lo", "hi", fams, methods, pal)
        ax.set_ylabel("accuracy (points)")
        ax.set_xlabel("")
        ax.set_title("Accuracy by family (95% bootstrap CI)")
        ax = axes[0 + 1, 0]
        others = [m for m in methods if m != baseline]
        groups = _order(dt["family"], fams)
        _grouped_bars(ax, dt, "family", "method", "delta", "ci_lo", "ci_hi", groups, others, pal, legend=False)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_ylabel(f"delta vs {baseline} (points)")
        ax.set_xlabel("")
        ax.set_title(f"Paired difference to {baseline} (95% paired bootstrap CI)")
    return _freeze(fig)


# =========================================================================== 03


def localisation(df_or_table: pd.DataFrame, methods: Sequence[str] | None = None):
    """IoU and pointing accuracy (points, 95 % CIs) by evidence-size bucket and method."""
    t = df_or_table if "bucket" in df_or_table.columns else ex.localisation_table(df_or_table, methods)
    if methods is not None:
        t = t[t["method"].isin(list(methods))]
    hs = _order(t["method"], methods)
    buckets = [b for b in [b[0] for b in ex.SIZE_BUCKETS] + ["all"] if b in set(t["bucket"])]
    pal = _palette(hs)
    with _style():
        fig, axes = _figure(1, 2, width=11, height=4)
        for ax, (y, lo, hi, name) in zip(axes[0], [("iou", "iou_lo", "iou_hi", "IoU with ground truth (points)"),
                                                  ("pointing", "pointing_lo", "pointing_hi",
                                                   "pointing accuracy (points)")]):
            _grouped_bars(ax, t, "bucket", "method", y, lo, hi, buckets, hs, pal, legend=(y == "iou"))
            ax.set_ylabel(name)
            ax.set_xlabel("evidence size (area / image area)")
        fig.suptitle(ex.bucket_legend(), fontsize=9)
    return _freeze(fig)


# =========================================================================== 04


def _place_labels(ax, points: list[tuple[float, float, str, object]], fontsize: float = 8) -> None:
    """Annotate points with labels that do not overlap: greedy, in axes-fraction units,
    trying offsets to the right (then left) of each point, moving down/up in steps."""
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    fig_w, fig_h = ax.figure.get_size_inches()
    pos = ax.get_position()
    ax_w_pt, ax_h_pt = fig_w * pos.width * 72, fig_h * pos.height * 72
    placed: list[tuple[float, float, float, float]] = []  # label boxes in points

    def box(px, py, dx, dy, text, right):
        w, h = 0.6 * fontsize * len(text), 1.2 * fontsize
        bx = px + dx if right else px + dx - w
        return (bx, py + dy, bx + w, py + dy + h)

    for x, y, text, colour in sorted(points, key=lambda p: (p[0], -p[1], p[2])):
        px = (x - x0) / (x1 - x0) * ax_w_pt
        py = (y - y0) / (y1 - y0) * ax_h_pt
        choice = None
        for right in (True, False):
            for step in (0, -1, 1, -2, 2, -3, 3, -4, 4):
                dx, dy = (6 if right else -6), 2 + step * 1.25 * fontsize
                b = box(px, py, dx, dy, text, right)
                if b[2] > ax_w_pt + 2 and right:
                    continue
                if all(b[2] <= q[0] or q[2] <= b[0] or b[3] <= q[1] or q[3] <= b[1] for q in placed):
                    choice = (dx, dy, right, b)
                    break
            if choice:
                break
        if choice is None:
            choice = (6, 2, True, box(px, py, 6, 2, text, True))
        dx, dy, right, b = choice
        placed.append(b)
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, color=colour,
                    ha="left" if right else "right", va="bottom")


def cost_accuracy(table: pd.DataFrame, reference: dict | None = None, highlight: str | None = "spatial-entropy"):
    """Accuracy (95 % CI) against mean cost (forward-equivalents) per stopping rule. Rules on
    the Pareto front are filled, dominated ones hollow (no line joins the front: a line
    between two front points would pass over a dominated rule between them and make it look
    on the front). ``highlight`` (the paper's rule) is a star; ``reference`` = {"label",
    "accuracy", "cost_fe"} adds a grey square (e.g. the base model)."""
    t = table.reset_index(drop=True)
    with _style():
        fig, axes = _figure(1, 1, width=7.5, height=4.8)
        ax = axes[0, 0]
        pal = _palette(list(t["rule"]))
        ax.errorbar(t["cost_fe"], t["accuracy"], yerr=[(t["accuracy"] - t["acc_lo"]).clip(lower=0),
                                                      (t["acc_hi"] - t["accuracy"]).clip(lower=0)],
                    fmt="none", ecolor="0.75", elinewidth=0.8, capsize=2, zorder=1)
        for r in t.itertuples():
            star = r.rule == highlight
            ax.scatter([r.cost_fe], [r.accuracy], facecolors=pal[r.rule] if r.pareto else "white",
                       edgecolors=pal[r.rule], marker="*" if star else "o", s=200 if star else 50,
                       zorder=4 if star else 3, linewidths=1.5)
        points = [(r.cost_fe, r.accuracy, r.rule, pal[r.rule]) for r in t.itertuples()]
        if reference is not None:
            ax.scatter([reference["cost_fe"]], [reference["accuracy"]], color="0.5", marker="s", zorder=3)
            points.append((reference["cost_fe"], reference["accuracy"], reference.get("label", "reference"), "0.4"))
        xs = [p[0] for p in points]
        span = max(xs) - min(xs) if len(xs) > 1 else 1.0
        ax.set_xlim(min(xs) - 0.05 * span - 0.5, max(xs) + 0.25 * span + 0.5)
        _place_labels(ax, points)
        ax.set_xlabel("mean cost per question (forward-equivalents: forward = 1, backward = 2)")
        ax.set_ylabel("accuracy (points)")
        ax.set_title("Stopping rules: accuracy vs cost (filled: on the Pareto front; hollow: dominated)")
    return _freeze(fig)


# =========================================================================== 05


#: Smallest half-range (points) of an ablation panel's y axis.
MIN_HALF_RANGE = 2.0


def ablations(table: pd.DataFrame, axes_order: Sequence[str] | None = None):
    """One panel per ablation axis: accuracy difference to the paper's setting (paired
    95 % CI; the paper's value, 0 by definition, is drawn in orange, the others in blue),
    the absolute accuracy written above each bar. Every panel spans at least +-2 points, so
    that an axis where nothing changes reads as flat rather than as noise magnified."""
    axes_names = list(axes_order) if axes_order is not None else list(dict.fromkeys(table["axis"]))
    n = len(axes_names)
    ncols = min(3, max(1, n))
    nrows = max(1, math.ceil(n / ncols))
    import seaborn as sns

    other, paper = sns.color_palette("colorblind", 2)  # blue, orange
    with _style():
        fig, axs = _figure(nrows, ncols, width=4.0 * ncols, height=3.2 * nrows)
        for i in range(nrows * ncols):
            ax = axs[i // ncols, i % ncols]
            if i >= n:
                ax.set_visible(False)
                continue
            t = table[table["axis"] == axes_names[i]].reset_index(drop=True)
            x = np.arange(len(t))
            d = t["delta"].fillna(0.0).to_numpy(float)
            cols = [paper if p else other for p in t["paper"]]
            ax.bar(x, d, color=cols, width=0.7)
            ax.scatter(x, d, color=cols, s=14, zorder=3)  # visible even when a delta is 0
            lo = (t["delta"] - t["ci_lo"]).fillna(0).clip(lower=0).to_numpy(float)
            hi = (t["ci_hi"] - t["delta"]).fillna(0).clip(lower=0).to_numpy(float)
            ax.errorbar(x, d, yerr=[lo, hi], fmt="none", ecolor="0.2", elinewidth=0.8, capsize=2)
            ax.axhline(0, color="0.3", lw=0.8)
            ylo, yhi = ax.get_ylim()
            ax.set_ylim(min(ylo, -MIN_HALF_RANGE), max(yhi, MIN_HALF_RANGE))
            for xi, r in zip(x, t.itertuples()):
                ax.annotate(f"{r.accuracy:.1f}", (xi, 0), xytext=(0, 2), textcoords="offset points",
                            ha="center", fontsize=7, color="0.25")
            ax.set_xticks(x)
            ax.set_xticklabels([str(v).replace("_", " ") for v in t["value"]], rotation=20, fontsize=8)
            ax.set_title(axes_names[i].replace("_", " "))
            ax.set_ylabel("delta vs paper's setting (points)" if i % ncols == 0 else "")
        fig.suptitle("Ablations (orange = the paper's choice; numbers = accuracy in points)", fontsize=10)
    return _freeze(fig)


# =========================================================================== 06


def multi_evidence(df_or_table: pd.DataFrame):
    """Accuracy (95 % CI) and evidence recall by number of evidence boxes and method."""
    t = df_or_table if "evidence" in df_or_table.columns else ex.multi_evidence_table(df_or_table)
    hs = _order(t["method"])
    xs = _order(t["evidence"], ["one box", "two boxes"])
    pal = _palette(hs)
    with _style():
        fig, axes = _figure(1, 2, width=10, height=4)
        _grouped_bars(axes[0, 0], t, "evidence", "method", "accuracy", "acc_lo", "acc_hi", xs, hs, pal)
        axes[0, 0].set_ylabel("accuracy (points)")
        axes[0, 0].set_title("Accuracy")
        with_rec = [h for h in hs if t.loc[t["method"] == h, "evidence_recall"].notna().any()]
        _grouped_bars(axes[0, 1], t[t["method"].isin(with_rec)], "evidence", "method", "evidence_recall",
                      x_order=xs, hue_order=with_rec, palette=pal, legend=False)
        axes[0, 1].set_ylabel("evidence recall (points)")
        axes[0, 1].set_title("Share of ground-truth boxes hit by a box")
        for ax in axes[0]:
            ax.set_xlabel("")
    return _freeze(fig)


# =========================================================================== saving


__all__ = ["main_results", "localisation", "cost_accuracy", "ablations", "multi_evidence", "save_figure",
           "accuracy_long"]
