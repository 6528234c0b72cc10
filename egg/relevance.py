"""Deprecated: moved to egg.method.relevance."""
from ._moved import moved

__getattr__ = moved(__name__, "egg.method.relevance")
