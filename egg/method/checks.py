"""Argument checks run before the first model pass, with messages that name the argument,
its value and the valid range (a typo must not cost a forward and backward pass first)."""
from __future__ import annotations

import math
import numbers
from typing import Iterable


def integer(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int; a float is accepted only when it is whole (2.0, never 2.7)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, numbers.Real) and not isinstance(value, bool):
        ok = math.isfinite(float(value)) and float(value).is_integer()
    rng = _range(lo, hi)
    if not ok:
        raise ValueError(f"{name} must be an integer{rng}, got {value!r}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must be an integer{rng}, got {value!r}")
    return v


def number(name: str, value, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           allow_inf: bool = False) -> float:
    """``value`` as a finite float (``allow_inf``: +inf too) inside [lo, hi] ((lo, hi] if ``lo_open``)."""
    rng = _range(lo, hi, lo_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number{rng}, got {value!r}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not (allow_inf and v > 0)):
        raise ValueError(f"{name} must be a finite number{rng}, got {value!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{name} must be a number{rng}, got {value!r}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be a number{rng}, got {value!r}")
    return v


def choice(name: str, value, options: Iterable[str], allow_callable: bool = False):
    """A name among ``options`` (or a callable when ``allow_callable``)."""
    if allow_callable and callable(value):
        return value
    opts = sorted(options)
    if not isinstance(value, str) or value not in opts:
        extra = " or a callable" if allow_callable else ""
        raise ValueError(f"{name} must be one of {opts}{extra}, got {value!r}")
    return value


def one_per(name: str, values, n: int) -> list:
    """``values`` as a list of ``n`` (one per question), or ``n`` Nones when it is None."""
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} needs one entry per question: got {len(values)} for {n} questions")
    return values


def _range(lo, hi, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}]"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


__all__ = ["integer", "number", "choice"]


def with_defaults(fn, options: dict, name: str, skip: Iterable[str] = ("vlm", "item", "image", "question")) -> dict:
    """``options`` completed with ``fn``'s keyword defaults; a name ``fn`` does not take raises
    a TypeError that lists the valid ones (one place for the method API, the batch API and
    the run registry)."""
    import inspect

    params = inspect.signature(fn).parameters.items()
    defaults = {k: p.default for k, p in params if k not in skip and p.default is not inspect.Parameter.empty
                and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"{name} has no option(s) {unknown}; valid: {sorted(defaults)}")
    return {**defaults, **options}
