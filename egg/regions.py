"""Deprecated: moved to egg.method.regions and egg.method.boxes."""
from ._moved import moved

__getattr__ = moved(__name__, "egg.method.regions", "egg.method.boxes")
