"""Deprecated: moved to egg.figures.method and egg.figures.base."""
from ._moved import moved

__getattr__ = moved(__name__, "egg.figures.method", "egg.figures.base")
