"""Deprecated: moved to egg.datasets."""
from ._moved import moved

__getattr__ = moved(__name__, "egg.datasets")
