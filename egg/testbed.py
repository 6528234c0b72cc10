"""Deprecated: moved to egg.synthetic.checks."""
from ._moved import moved

__getattr__ = moved(__name__, "egg.synthetic.checks")
