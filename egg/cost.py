"""Deprecated: moved to egg.runs.cost and egg.figures.cost."""
from ._moved import moved

__getattr__ = moved(__name__, "egg.runs.cost", "egg.figures.cost")
