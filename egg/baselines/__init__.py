"""Baselines: ViCrop (attention / gradient crops) and the random / oracle crop bounds."""
from .bounds import oracle, random_box
from .vicrop import GENERIC_PROMPT, VARIANTS, choose_window, vicrop, vicrop_batch, vicrop_map

__all__ = ["vicrop", "vicrop_batch", "vicrop_map", "choose_window", "oracle", "random_box", "VARIANTS", "GENERIC_PROMPT"]
