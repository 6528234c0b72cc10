"""Torch's CPU thread count, set from the cores this process may use.

Left alone, torch takes every core of the machine even when other processes use some of
them; on a shared 2-core machine that made each question 27-29x slower than one thread.
``make reproduce`` (through ``egg.reproduce``) and ``python -m egg`` call ``set_threads``.
"""
from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(processes: int = 1) -> int:
    """Threads per process when ``processes`` share this machine's available cores."""
    return max(1, available_cores() // max(1, int(processes)))


def set_threads(n: int | None = None, processes: int = 1) -> int:
    """Set torch's intra-op threads (None: ``default_threads(processes)``); returns the count."""
    import torch

    n = default_threads(processes) if n is None else int(n)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n
