"""Synthetic relevance maps shared by the region and stopping-rule tests."""
from __future__ import annotations

import numpy as np

YY, XX = np.mgrid[0:24, 0:24]


def blob(cx: float, cy: float, s: float = 1.5, a: float = 1.0) -> np.ndarray:
    """A Gaussian bump on a 24 x 24 grid: a map focused on one place."""
    return a * np.exp(-((XX - cx) ** 2 + (YY - cy) ** 2) / (2 * s * s))
