"""Deprecated: moved to egg.runs."""
from ._moved import moved

__getattr__ = moved(__name__, "egg.runs")
