"""The reference model's card figure (notebook 09): training loss, headroom, pointing."""
from __future__ import annotations

#: What each logged training loss is (``egg.reference.train``), for the legend.
LOSS_NAMES = {
    "lm": "lm: the answers' tokens",
    "look": "look: -log attention share on the named object",
    "colour": "colour: key-colour probe",
    "read": "read: glyph probe",
    "where": "where: position probe",
    "shape": "shape: per-patch shape probe (pope objects)",
}
CONDITIONS = ["base", "oracle", "box_crop", "peak_crop", "random_crop"]


def plot_card(s, record: dict | None = None, rows=None):
    """Training losses; per family, accuracy under each condition and the map's pointing
    rate against chance, in points. With the per-item ``rows`` (``checks.measure``), the
    bars carry 95% bootstrap intervals (seed 0); from the summary ``s`` alone, none."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    if record and record.get("loss"):
        loss = pd.DataFrame(record["loss"])
        for col in [c for c in LOSS_NAMES if c in loss]:
            axes[0].plot(loss.step, loss[col], label=LOSS_NAMES[col])
        if "phase" in loss and (loss.phase == "read").any():  # the loss jumps where the mixture starts
            x = loss.step[loss.phase == "read"].max()
            axes[0].axvline(x, color="grey", ls=":", lw=1)
            for label, ha in (("curriculum ", "right"), (" full mixture", "left")):
                axes[0].text(x, 0.02, label, ha=ha, color="grey", transform=axes[0].get_xaxis_transform())
        axes[0].set(xlabel="decoder step", ylabel="loss (smoothed)", title="training", yscale="log")
        axes[0].legend(ncol=1, loc="upper right", fontsize=7)
    data = rows if rows is not None else s
    ci = ("ci", 95) if rows is not None else None
    long = data.melt(id_vars="family", value_vars=CONDITIONS, var_name="condition", value_name="accuracy")
    long["accuracy"] *= 100
    sns.barplot(long, x="family", y="accuracy", hue="condition", ax=axes[1], errorbar=ci, seed=0, err_kws={"lw": 0.8})
    axes[1].set(title="accuracy by condition" + (" (95% CI)" if ci else ""), ylim=(0, 100), ylabel="accuracy (points)")
    pt = data.assign(pointing=100 * data.pointing.astype(float), chance=100 * data.chance)
    pt = pt.melt(id_vars="family", value_vars=["pointing", "chance"], var_name="", value_name="rate")
    sns.barplot(pt, x="family", y="rate", hue="", ax=axes[2], errorbar=ci, seed=0, err_kws={"lw": 0.8})
    axes[2].set(title="entropy-gradient peak inside the evidence" + (" (95% CI)" if ci else ""), ylim=(0, 100),
                ylabel="items (points)")
    for ax, ncol in ((axes[1], 3), (axes[2], 2)):  # below the bars, which fill the panel
        ax.set_xlabel("")
        sns.move_legend(ax, "upper center", bbox_to_anchor=(0.5, -0.08), ncol=ncol, frameon=False, title=None)
    fig.tight_layout()
    return fig
