"""Old module paths that keep working for one release, with a DeprecationWarning.

A module that moved leaves behind a two-line stub: ``__getattr__ = moved(__name__, new...)``.
Attribute access (and ``from old import name``) is forwarded to the first new module that
has the name.
"""
from __future__ import annotations

import importlib
import warnings


def moved(old: str, *new: str):
    """A module ``__getattr__`` for the stub ``old`` that forwards to the modules ``new``."""

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        warnings.warn(f"{old} is deprecated and goes in the next release; import from {' or '.join(new)}",
                      DeprecationWarning, stacklevel=2)
        for mod in new:
            m = importlib.import_module(mod)
            if hasattr(m, name):
                return getattr(m, name)
        raise AttributeError(f"module {old!r} (moved to {', '.join(new)}) has no attribute {name!r}")

    return __getattr__
