"""Deprecated: moved to egg.method.zoom and egg.method.result."""
from ._moved import moved

__getattr__ = moved(__name__, "egg.method.zoom", "egg.method.result")
