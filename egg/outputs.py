"""Notebook outputs: where they go and what keeps them reproducible.

Relative output paths resolve against the source checkout, so `figures/` and `results/`
land in the repository whatever the kernel's working directory; progress bars and library
chatter are switched off, because nbval compares the executed outputs."""
from __future__ import annotations

import os
from pathlib import Path


#: The directory above the package: the repository root in a source checkout.
REPO_ROOT = Path(__file__).resolve().parent.parent


def project_root() -> Path | None:
    """The source checkout holding this package (the directory with pyproject.toml), or None."""
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else None


def resolve_dir(path, create: bool = True) -> Path:
    """A directory; a relative one is taken relative to the repository root (outside a
    source checkout, relative to the working directory)."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_absolute():
        p = (project_root() or Path.cwd()) / p
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


def display_path(path) -> str:
    """``path`` relative to the project root when inside it, so printed paths carry no
    machine-specific prefix."""
    root = project_root()
    try:
        return str(Path(path).resolve().relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


def silence_libraries() -> None:
    """No hub progress bars; transformers logs only errors."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - transformers missing or changed: only cosmetics
        pass


PROGRESS_ENV = "EGG_PROGRESS_LOG"


def progress_line(text: str) -> None:
    """Append one line to the file named by ``$EGG_PROGRESS_LOG``, if set. Notebooks run with
    their progress bars off (a kernel would capture them into the committed outputs), so
    ``make reproduce`` sets it and prints the file as it grows: a long notebook is not silent."""
    path = os.environ.get(PROGRESS_ENV)
    if path:
        with open(path, "a") as f:
            f.write(text.rstrip() + "\n")
