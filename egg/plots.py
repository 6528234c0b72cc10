"""Deprecated: moved to egg.figures.results and egg.figures.base."""
from ._moved import moved

__getattr__ = moved(__name__, "egg.figures.results", "egg.figures.base")
