"""egg: Entropy-Gradient Grounding for vision-language models.

>>> import egg
>>> vlm = egg.load_model()                      # the embedded reference VLM (data/reference-llava15-large-pope)
>>> item = egg.bench.load("text", n=1, geometry=egg.bench.geometry_for(vlm))[0]  # items drawn for its grid
>>> g = egg.ground(vlm, item.image, item.question)
>>> g.answer, g.boxes
"""
from . import figures, metrics, synthetic
from . import synthetic as bench
from .api import REFERENCE_DIR, VLM, answer, load_image, load_model
from .baselines import oracle, random_box, vicrop, vicrop_batch
from .method.result import Grounding, Iteration
from .method.batch import ground_batch
from .method.zoom import ground

__all__ = ["bench", "synthetic", "figures", "metrics", "load_model", "answer", "ground", "ground_batch", "vicrop", "vicrop_batch", "oracle", "random_box",
           "Grounding", "Iteration", "VLM", "REFERENCE_DIR", "load_image"]
__version__ = "0.1.0"
