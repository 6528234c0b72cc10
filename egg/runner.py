"""Deprecated: moved to egg.runs.runner."""
from ._moved import moved

__getattr__ = moved(__name__, "egg.runs.runner")
