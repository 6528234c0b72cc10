"""The cost benchmark's figure (``python -m egg cost``, notebook 08)."""
from __future__ import annotations

import numpy as np

from ..runs.cost import CostReport


def plot(report: CostReport, figsize=(11.0, 3.6)):
    """Time per question relative to the base answer (wall and CPU), the passes and
    encodings per question, and the embedding-cache speed-up: one figure, three panels."""
    import matplotlib.pyplot as plt

    names = list(report.rows)
    t = report.timings()
    c = report.counters()
    fig, ax = plt.subplots(1, 3, figsize=figsize, layout="constrained",
                           gridspec_kw={"width_ratios": [1.3, 1.3, 0.8]})
    y = np.arange(len(names))
    h = 0.4
    ax[0].barh(y - h / 2, t["x_base"].to_numpy(), height=h, color="#ef6c00", label="wall time")
    ax[0].barh(y + h / 2, t["cpu_x_base"].to_numpy(), height=h, color="#1e88e5", label="CPU time")
    ax[0].set_yticks(y, names, fontsize=8)
    ax[0].invert_yaxis()
    ax[0].axvline(1.0, color="0.3", lw=0.8, ls=":")
    ax[0].set_xlabel("per question, x base answer")
    ax[0].legend(fontsize=7, frameon=False)
    ax[0].set_title(f"time ({report.n_questions} questions, {report.repeats} round(s))")
    w = 0.27
    for j, (col, colour) in enumerate(zip(["forward", "backward", "images_encoded"], ["#5e35b1", "#d81b60", "#43a047"])):
        ax[1].barh(y + (j - 1) * w, c[col].to_numpy(), height=w, color=colour, label=col.replace("_", " "))
    ax[1].set_yticks(y, names, fontsize=8)
    ax[1].invert_yaxis()
    ax[1].set_xlabel("per question")
    ax[1].legend(fontsize=7, frameon=False)
    ax[1].set_title("passes and encodings")
    ct = report.cache
    x = np.arange(2)
    ax[2].bar(x - 0.2, [ct["recomputed"]["sec_per_q"] / ct["cached"]["sec_per_q"], 1.0], width=0.4,
              color="#ef6c00", label="wall")
    ax[2].bar(x + 0.2, [ct["recomputed"]["cpu_sec_per_q"] / ct["cached"]["cpu_sec_per_q"], 1.0], width=0.4,
              color="#1e88e5", label="CPU")
    ax[2].set_xticks(x, ["recomputed\n(authors)", "cached\n(egg)"], fontsize=8)
    ax[2].set_ylabel("time, x cached")
    top = max(1.0, ct["recomputed"]["sec_per_q"] / ct["cached"]["sec_per_q"],
              ct["recomputed"]["cpu_sec_per_q"] / ct["cached"]["cpu_sec_per_q"])
    ax[2].set_ylim(0, 1.3 * top)
    ax[2].legend(fontsize=7, frameon=False, ncol=2, loc="upper center")
    ax[2].set_title(f"embedding cache, EGG fixed {report.iterations} ({report.n_questions} questions)")
    for a in ax:
        for side in ("top", "right"):
            a.spines[side].set_visible(False)
    return fig
