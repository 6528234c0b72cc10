"""An interactive explorer of EGG for Jupyter (ipywidgets).

>>> from egg.explorer import Explorer
>>> ex = Explorer(vlm)          # vlm = egg.load_model(); None loads the embedded reference
>>> ex                          # in a notebook: the controls and the picture

Controls: a benchmark item (family + index) or an uploaded image, the question, and the
method's knobs -- objective, layers differentiated, sigma, threshold method, k, zoom
iterations and stopping rule. Every change re-runs ``egg.ground`` and redraws the map,
the smoothed map, the threshold, the components, the crops and the answers (base and
EGG). The redraw is the plain method ``update()``; the latest result is kept in
``.grounding`` (an ``egg.Grounding``), ``.before`` (the base answer), ``.figure`` (the
matplotlib figure) and ``.png`` (its PNG bytes, what the ``view`` widget shows), so a test
(or a script) can drive the explorer without a browser by setting widget values.
"""
from __future__ import annotations

import html
import io
from typing import Any

from .. import synthetic as bench
from ..method.objectives import OBJECTIVES
from ..method.regions import THRESHOLDS
from ..method.stopping import RULES

#: The knobs that re-run the method when they change.
METHOD_CONTROLS = ("objective", "layer", "sigma", "threshold", "k", "iterations", "stopping", "question")


class Explorer:
    """ipywidgets explorer of EGG on benchmark items or uploaded images.

    vlm: a VLM / adapter (None: ``egg.load_model()``, the embedded reference).
    family, index, split, seed: the benchmark item shown first (``egg.bench.item``).
    objective, layer (None = all layers), sigma, threshold, k, iterations (zoom cap; the
    exact count for the "fixed" rule), stopping: initial values of the controls.
    max_new_tokens: answer length. dpi: resolution of the picture.
    """

    def __init__(self, vlm=None, family: str = "text", index: int = 0, *, split: str = "test", seed: int = 0,
                 objective: str = "entropy", layer: int | None = None, sigma: float = 1.5,
                 threshold: str = "elbow", k: int = 2, iterations: int = 2, stopping: str = "spatial-entropy",
                 max_new_tokens: int = 8, dpi: int = 96):
        import ipywidgets as w

        from ..adapters import as_adapter

        if vlm is None:
            from ..api import load_model

            vlm = load_model()
        self.vlm = vlm
        self.adapter = as_adapter(vlm)
        self.split, self.seed, self.max_new_tokens, self.dpi = split, int(seed), int(max_new_tokens), int(dpi)
        n_layers = int(self.adapter.num_layers)

        self.item = None
        self.image = None
        self.grounding = None
        self.before: str | None = None
        self.figure = None
        self.png: bytes = b""
        self.error: str | None = None
        self.updates = 0
        self._suspend = 0
        self._before_cache: dict[tuple, str] = {}

        style = {"description_width": "90px"}
        lay = w.Layout(width="300px")
        self.family = w.Dropdown(options=bench.families(), value=family, description="family", style=style, layout=lay)
        self.index = w.BoundedIntText(value=int(index), min=0, max=100_000, step=1, description="item index",
                                      style=style, layout=lay)
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="upload image")
        self.use_item = w.Button(description="back to the item", tooltip="drop the uploaded image")
        self.question = w.Text(value="", description="question", continuous_update=False, style=style,
                               layout=w.Layout(width="600px"))
        self.objective = w.Dropdown(options=list(OBJECTIVES), value=objective.replace("-", "_"), description="objective",
                                    style=style, layout=lay)
        self.layer = w.IntSlider(value=n_layers if layer is None else int(layer), min=1, max=n_layers,
                                 description="layers", continuous_update=False, style=style, layout=lay,
                                 tooltip="differentiate the first L decoder layers (max = the full model)")
        self.sigma = w.FloatSlider(value=float(sigma), min=0.0, max=4.0, step=0.25, description="sigma",
                                   continuous_update=False, style=style, layout=lay, readout_format=".2f")
        self.threshold = w.Dropdown(options=list(THRESHOLDS), value=threshold, description="threshold", style=style,
                                    layout=lay)
        self.k = w.IntSlider(value=int(k), min=1, max=4, description="k (regions)", continuous_update=False,
                             style=style, layout=lay)
        self.iterations = w.IntSlider(value=int(iterations), min=0, max=4, description="iterations",
                                      continuous_update=False, style=style, layout=lay)
        self.stopping = w.Dropdown(options=[r for r in RULES if r != "resolution"], value=stopping,
                                   description="stopping", style=style, layout=lay)
        self.status = w.HTML(value="")
        self.view = w.Image(format="png", layout=w.Layout(width="100%", max_width="1100px"))
        self.view.add_class("egg-explorer-view")

        left = w.VBox([self.family, self.index, w.HBox([self.upload, self.use_item])])
        mid = w.VBox([self.objective, self.layer, self.sigma, self.threshold])
        right = w.VBox([self.k, self.iterations, self.stopping])
        self.ui = w.VBox([w.HBox([left, mid, right]), self.question, self.status, self.view])
        self.ui.add_class("egg-explorer")

        self.family.observe(self._on_item, names="value")
        self.index.observe(self._on_item, names="value")
        self.upload.observe(self._on_upload, names="value")
        self.use_item.on_click(lambda _b: self._on_item(None))
        for name in METHOD_CONTROLS:
            getattr(self, name).observe(self._on_param, names="value")

        self.load_item(update=False)
        self.update()

    # ---- display -------------------------------------------------------------------------

    def _repr_mimebundle_(self, **kw):
        return self.ui._repr_mimebundle_(**kw)

    def __repr__(self) -> str:
        src = f"{self.family.value}[{self.index.value}]" if self.item is not None else "uploaded image"
        return f"Explorer({src}, answer={self.grounding.answer if self.grounding else None!r})"

    # ---- inputs --------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """The ``egg.ground`` keyword arguments the controls stand for."""
        n_layers = int(self.adapter.num_layers)
        return dict(objective=self.objective.value,
                    num_layers=None if self.layer.value >= n_layers else int(self.layer.value),
                    sigma=float(self.sigma.value), threshold=self.threshold.value, k=int(self.k.value),
                    stopping=self.stopping.value, max_iterations=int(self.iterations.value),
                    fixed_n=int(self.iterations.value), max_new_tokens=self.max_new_tokens)

    def set(self, **values) -> None:
        """Set several controls at once with a single redraw, e.g. ``ex.set(sigma=2.0, k=3)``.
        ``family`` / ``index`` (re)load that item, question included; ``question`` then
        overrides it. Nothing is recomputed when nothing changes."""
        valid = METHOD_CONTROLS + ("family", "index")
        unknown = [k for k in values if k not in valid]
        if unknown:
            raise ValueError(f"unknown controls {unknown}; valid: {list(valid)}")
        before = (self._input_key(), self.params())
        self._suspend += 1
        try:
            for name in ("family", "index"):
                if name in values:
                    getattr(self, name).value = values[name]
            if "family" in values or "index" in values:
                self.load_item(update=False)
            for name in METHOD_CONTROLS:
                if name in values:
                    getattr(self, name).value = values[name]
        finally:
            self._suspend -= 1
        if self.grounding is None or self.error is not None or (self._input_key(), self.params()) != before:
            self.update()

    def _input_key(self) -> tuple:
        """What identifies the input: the image's pixels and the question."""
        import hashlib

        if self.image is None:
            return (None, self.question.value)
        return (self.image.size, hashlib.sha1(self.image.tobytes()).hexdigest(), self.question.value)

    def load_item(self, update: bool = True) -> None:
        """Show the benchmark item named by the family and index controls (its question too)."""
        self.item = bench.item(self.family.value, self.split, int(self.index.value), self.seed,
                               bench.geometry_for(self.adapter))
        self.image = self.item.image
        self._suspend += 1
        try:
            self.question.value = self.item.question
        finally:
            self._suspend -= 1
        if update:
            self.update()

    def load_image(self, image, question: str | None = None, update: bool = True) -> None:
        """Show an image of one's own (PIL image, array, path or bytes of an image file)."""
        from ..images import load_image

        if isinstance(image, (bytes, bytearray, memoryview)):
            from PIL import Image

            image = Image.open(io.BytesIO(bytes(image)))
            image.load()
        self.image = load_image(image)
        self.item = None
        if question is not None:
            self._suspend += 1
            try:
                self.question.value = question
            finally:
                self._suspend -= 1
        if update:
            self.update()

    def _on_item(self, _change) -> None:
        if not self._suspend:
            self.load_item()

    def _on_param(self, _change) -> None:
        if not self._suspend:
            self.update()

    def _on_upload(self, change) -> None:
        files = change["new"]
        if not files:
            return
        f = files[0] if isinstance(files, (list, tuple)) else next(iter(files.values()))
        content = f["content"] if isinstance(f, dict) else f.content
        try:
            self.load_image(bytes(content))
        except Exception as e:  # noqa: BLE001 - show, don't crash the widget
            self.error = f"cannot read the uploaded file: {e}"
            self.status.value = f"<b style='color:#c62828'>{html.escape(self.error)}</b>"

    # ---- the redraw ----------------------------------------------------------------------

    def update(self):
        """Re-run EGG with the current controls and redraw; returns the Grounding (or None
        when the input is invalid, e.g. an empty question: ``.error`` says why)."""
        import matplotlib.pyplot as plt

        from . import method as viz
        from .base import figure_png
        from ..api import answer
        from ..method.zoom import ground

        self.updates += 1
        q = self.question.value
        try:
            if self.image is None:
                raise ValueError("no image")
            key = self._input_key()
            if key not in self._before_cache:
                if len(self._before_cache) >= 32:
                    self._before_cache.pop(next(iter(self._before_cache)))
                self._before_cache[key] = answer(self.vlm, self.image, q, max_new_tokens=self.max_new_tokens)
            before = self._before_cache[key]
            g = ground(self.vlm, self.image, q, **self.params())
        except (ValueError, TypeError) as e:
            self.error = str(e)
            self.status.value = f"<b style='color:#c62828'>{html.escape(self.error)}</b>"
            return None
        self.error = None
        self.before, self.grounding = before, g
        gt = list(self.item.boxes) if self.item is not None else None
        if self.figure is not None:
            plt.close(self.figure)
        self.figure = viz.explorer_figure(g, self.image, gt_boxes=gt, before=before)
        self.png = figure_png(self.figure, dpi=self.dpi)
        plt.close(self.figure)  # shown through the Image widget, not by the inline backend
        self.view.value = self.png
        self.status.value = self._status_html()
        return g

    def _status_html(self) -> str:
        from .method import describe

        g = self.grounding
        c = g.cost
        txt = describe(g, before=self.before, item=self.item)
        cost = (f"{len(g.trace) - 1} zoom iteration(s); {c.forward} forward, {c.backward} backward passes, "
                f"{c.images_encoded} images encoded")
        return f"<div class='egg-explorer-status'>{html.escape(txt)}<br><small>{html.escape(cost)}</small></div>"


__all__ = ["Explorer", "METHOD_CONTROLS"]
