"""The reference model's card figure (notebook 09): training loss, headroom, pointing."""
from __future__ import annotations


def plot_card(s, record: dict | None = None):
    """Training loss, and per family base vs oracle accuracy and pointing vs chance."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    if record and record.get("loss"):
        loss = pd.DataFrame(record["loss"])
        for col in [c for c in ("lm", "look", "colour", "read") if c in loss]:
            axes[0].plot(loss.step, loss[col], label=col)
        if "phase" in loss and (loss.phase == "read").any():  # the loss jumps where the mixture starts
            x = loss.step[loss.phase == "read"].max()
            axes[0].axvline(x, color="grey", ls=":", lw=1)
            for label, ha in (("curriculum ", "right"), (" full mixture", "left")):
                axes[0].text(x, 0.02, label, ha=ha, color="grey", transform=axes[0].get_xaxis_transform())
        axes[0].set(xlabel="decoder step", ylabel="loss (smoothed)", title="training", yscale="log")
        axes[0].legend(ncol=2, loc="upper right")
    long = s.melt(id_vars="family", value_vars=["base", "oracle", "box_crop", "peak_crop", "random_crop"],
                  var_name="condition", value_name="accuracy")
    sns.barplot(long, x="family", y="accuracy", hue="condition", ax=axes[1])
    axes[1].set(title="accuracy by condition", ylim=(0, 1))
    pt = s.melt(id_vars="family", value_vars=["pointing", "chance"], var_name="", value_name="rate")
    sns.barplot(pt, x="family", y="rate", hue="", ax=axes[2])
    axes[2].set(title="entropy-gradient peak inside the evidence", ylim=(0, 1))
    for ax, ncol in ((axes[1], 3), (axes[2], 2)):  # below the bars, which fill the panel
        ax.set_xlabel("")
        sns.move_legend(ax, "upper center", bbox_to_anchor=(0.5, -0.08), ncol=ncol, frameon=False, title=None)
    fig.tight_layout()
    return fig
