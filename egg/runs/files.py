"""Where runs and tables are written, and how a notebook loads its model."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..outputs import REPO_ROOT, resolve_dir, silence_libraries


def _fmt_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else f"{float(v):.2f}"
    return str(v).replace("|", "\\|")


def to_markdown(df: pd.DataFrame, index: bool = True) -> str:
    """A GitHub markdown table (no ``tabulate`` needed); floats with 2 decimals."""
    d = df.reset_index() if index and not isinstance(df.index, pd.RangeIndex) else df
    head = [str(c) for c in d.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in d.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, name: str, out_dir="results") -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.csv`` and ``<name>.md``; returns both paths."""
    d = resolve_dir(out_dir)
    keep_index = not isinstance(df.index, pd.RangeIndex)
    csv = d / f"{name}.csv"
    df.to_csv(csv, index=keep_index, float_format="%.6g", lineterminator="\n")
    md = d / f"{name}.md"
    md.write_text(to_markdown(df, index=keep_index), encoding="utf-8")
    return csv, md


def quiet() -> None:
    """No progress bars or library logging in notebook outputs (they must be reproducible);
    warnings are left alone: they are silenced only around the calls that need it."""
    import logging

    silence_libraries()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    pd.set_option("display.precision", 2)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 50)


def load_vlm(model=None, device=None):
    """``egg.load_model`` with quiet output; a relative path that does not exist from the
    working directory is looked up relative to the repository root."""
    from ..api import load_model

    import warnings

    quiet()
    if model is not None:
        p = Path(os.path.expanduser(str(model)))
        if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
            model = str(REPO_ROOT / p)
    with warnings.catch_warnings():  # transformers' deprecation chatter while loading; errors still raise
        warnings.simplefilter("ignore")
        return load_model(model, device=device)


def results_path(results_dir="results", name: str = "records.jsonl") -> Path:
    """The shared JSON-lines records file in ``results_dir`` (see module docstring)."""
    return resolve_dir(results_dir) / name
