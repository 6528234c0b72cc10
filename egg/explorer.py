"""Deprecated: moved to egg.figures.explorer."""
from ._moved import moved

__getattr__ = moved(__name__, "egg.figures.explorer")
