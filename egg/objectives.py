"""Deprecated: moved to egg.method.objectives."""
from ._moved import moved

__getattr__ = moved(__name__, "egg.method.objectives")
