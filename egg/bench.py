"""``egg.bench`` is ``egg.synthetic``, the procedural benchmark (public name, kept)."""
import sys

from . import synthetic

sys.modules[__name__] = synthetic
