"""What every figure shares: notebook setup, and one writer of reproducible figure files."""
from __future__ import annotations

import io
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


#: Two PNGs whose pixels all lie within this many levels (of 255) show the same figure: another
#: CPU's float rounding moves a few anti-aliased edge pixels by 1-3 levels, a real change by far more.
PIXEL_TOLERANCE = 8


def same_picture(a: bytes, b: bytes, tol: int = PIXEL_TOLERANCE) -> bool:
    """Whether two PNGs differ only by float noise (same size, every channel within ``tol``)."""
    from matplotlib.image import imread

    x, y = (np.round(imread(io.BytesIO(d), format="png") * 255).astype(np.int16) for d in (a, b))
    return x.shape == y.shape and int(np.abs(x - y).max(initial=0)) <= tol


def save_figure(fig, name: str, out_dir: str | os.PathLike = "figures", formats: Sequence[str] = ("png", "pdf"),
                dpi: int = 150) -> list[str]:
    """Save ``fig`` as ``<out_dir>/<name>.<fmt>`` for each format, reproducibly (no creation
    date in the PDF, no software tag in the PNG). A figure whose PNG matches the one on disk
    within float noise (`same_picture`) leaves every file as it was, so a rerun on another CPU
    leaves `git status` clean. Returns the paths, relative to the project root when inside it
    (so printed paths carry no machine-specific prefix)."""
    d = resolve_dir(out_dir)
    png, old = figure_png(fig, dpi, bbox_inches="tight"), d / f"{name}.png"
    unchanged = "png" in formats and old.exists() and same_picture(old.read_bytes(), png)
    written = []
    for fmt in formats:
        path = d / f"{name}.{fmt}"
        # Every format is drawn on every call, written or not: a constrained layout moves a little with
        # each draw, so what the notebook shows after this call must not depend on what was on disk.
        data = png if fmt == "png" else figure_bytes(fig, fmt, dpi, bbox_inches="tight")
        if not (unchanged and path.exists()):
            path.write_bytes(data)
        written.append(display_path(path))
    return written


#: What a file would record of when and by what it was written, per format (left out).
_NO_STAMP = {"png": {"Software": None}, "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}}


def figure_bytes(fig, fmt: str = "png", dpi: int = 80, **savefig) -> bytes:
    """The figure as a file's bytes, without a date or software stamp: equal figures give equal bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, metadata=_NO_STAMP.get(fmt), **savefig)
    return buf.getvalue()


def figure_png(fig, dpi: int = 80, **savefig) -> bytes:
    """The figure as PNG bytes (no software tag: equal figures give equal bytes)."""
    return figure_bytes(fig, "png", dpi, **savefig)
