"""Deprecated: moved to egg.method.stopping."""
from ._moved import moved

__getattr__ = moved(__name__, "egg.method.stopping")
