"""What every figure shares: notebook setup, and one writer of reproducible figure files."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..outputs import display_path, resolve_dir, silence_libraries


def notebook_setup(seed: int = 0) -> None:
    """Quiet, deterministic notebook output: no progress bars, seeded RNGs, fixed
    matplotlib settings (so a re-run gives the same text outputs and figures), and pandas
    tables shown whole."""
    silence_libraries()
    os.environ.setdefault("TQDM_DISABLE", "1")
    import random

    import matplotlib

    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except Exception:  # noqa: BLE001
        pass
    matplotlib.rcParams.update({"svg.hashsalt": "egg", "figure.dpi": 100, "savefig.dpi": 150,
                                "font.size": 9, "axes.titlesize": 9})
    try:  # tables shown whole: no "..." hiding columns or rows
        import pandas as pd

        pd.set_option("display.max_columns", None)
        pd.set_option("display.max_rows", 200)
        pd.set_option("display.width", 250)
    except ImportError:
        pass


def save_figure(fig, name: str, out_dir: str | os.PathLike = "figures", formats: Sequence[str] = ("png", "pdf"),
                dpi: int = 150) -> list[str]:
    """Save ``fig`` as ``<out_dir>/<name>.<fmt>`` for each format, reproducibly (no creation
    date in the PDF, no software tag in the PNG). Returns the paths written, relative to
    the project root when inside it (so printed paths carry no machine-specific prefix)."""
    d = resolve_dir(out_dir)
    written = []
    for fmt in formats:
        path = d / f"{name}.{fmt}"
        meta = ({"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None} if fmt == "pdf"
                else {"Software": None} if fmt == "png" else None)
        fig.savefig(path, format=fmt, dpi=dpi, metadata=meta, bbox_inches="tight")
        written.append(display_path(path))
    return written


def figure_png(fig, dpi: int = 80) -> bytes:
    """The figure as PNG bytes (no software tag: equal figures give equal bytes)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()
