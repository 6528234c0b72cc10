"""All plotting. ``base``: notebook setup and ``save_figure``; ``method``: the method's
pictures (maps, regions, states); ``results``: the notebooks' result figures; ``explorer``:
the interactive explorer; ``cost`` and ``card``: the cost benchmark's and the reference
card's figures."""
from .base import figure_png, notebook_setup, save_figure
from .draw import overlay

__all__ = ["notebook_setup", "save_figure", "figure_png", "overlay"]
