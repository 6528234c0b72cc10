"""What a grounding run returns: ``Grounding`` and its ``Iteration`` states, plain records
that save to JSON and load back (the image itself is not saved)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..adapters.records import Cost
from .boxes import Box, as_box
from .stopping import IterationStats


@dataclass
class Iteration:
    """One state of the loop (or the single map of a baseline).

    index: state number (0 = original image alone).
    crops: crop boxes present in this state's prompt, original-image pixels.
    maps: relevance maps, one per token grid of the prompt (grid 0 = the original);
        empty for a final state whose map the stopping rule cannot use (a fixed rule's
        last state; a resolution rule's state below the floor or at the cap): that map
        is not computed, and the state's map statistics are NaN.
    map_boxes: for each map, the box of the original image its grid covers (pixels).
    boxes: regions proposed from this state's map, original pixels, best first (they
        become the next state's crops).
    masses: raw relevance mass of each proposed region.
    spatial_entropy: of the searched maps (mass-weighted mean over the crops' maps).
    entropy, max_prob, token: the differentiated next-token distribution.
    min_crop_area: area (px) of the smallest crop in this state; inf for state 0.
    answer: the answer at this state, when generated (``answer_every`` or chosen state).
    degenerate: the searched maps were all zero (see module docstring).
    searched: indices into ``maps`` of the grids this state searched for regions (the
        newest images': the original's grids at state 0, the crops' after), as the loop
        decided them; figures read them from here instead of guessing.
    cost: work done for this state.
    """

    index: int
    crops: list[Box] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    map_boxes: list[Box] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    masses: list[float] = field(default_factory=list)
    searched: list[int] = field(default_factory=list)
    spatial_entropy: float = float("nan")
    entropy: float = float("nan")
    max_prob: float = float("nan")
    token: str = ""
    min_crop_area: float = float("inf")
    answer: str | None = None
    degenerate: bool = False
    cost: Cost = field(default_factory=Cost)

    def stats(self) -> IterationStats:
        return IterationStats(spatial_entropy=self.spatial_entropy, max_prob=self.max_prob,
                              entropy=self.entropy, min_crop_area=self.min_crop_area)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["maps"] = [np.asarray(m, dtype=np.float64).tolist() for m in self.maps]
        d["crops"] = [list(b) for b in self.crops]
        d["map_boxes"] = [list(b) for b in self.map_boxes]
        d["boxes"] = [list(b) for b in self.boxes]
        d["cost"] = self.cost.to_dict()
        return {k: jsonable(v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Iteration":
        d = dict(d)
        d["maps"] = [np.asarray(m, dtype=np.float64) for m in d.get("maps", [])]
        for k in ("crops", "map_boxes", "boxes"):
            d[k] = [as_box(b) for b in d.get(k, [])]
        d["cost"] = Cost.from_dict(d.get("cost", {}))
        for k in ("spatial_entropy", "entropy", "max_prob", "min_crop_area"):
            if k in d:
                d[k] = _unjson_float(d[k])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class Grounding:
    """The result of ``ground`` / ``vicrop`` / ``oracle`` / ``random_box``.

    answer: the answer generated from the original + the chosen crops.
    boxes: evidence boxes, original-image pixels (x0, y0, x1, y1), best first: the crops
        the answer used; when it used none (chosen state 0), the regions the original's
        map proposes.
    trace: one ``Iteration`` per state computed.
    cost: total work (forward/backward passes, images encoded, tokens, wall time).
    best_index: the chosen state (index into ``trace``).
    method: "egg", "vicrop:rel-att", "oracle", "random", ...
    question, image_size: the input (the image itself is kept in ``image`` for ``plot``
        but not serialised).
    params: the settings used.
    """

    answer: str
    boxes: list[Box]
    trace: list[Iteration]
    cost: Cost
    best_index: int = 0
    method: str = "egg"
    question: str = ""
    image_size: tuple[int, int] = (0, 0)
    params: dict = field(default_factory=dict)
    image: Any = field(default=None, repr=False, compare=False)

    @property
    def box(self) -> Box | None:
        """The best box (``boxes[0]``), or None."""
        return self.boxes[0] if self.boxes else None

    @property
    def crops(self) -> list[Box]:
        """The crops the answer used (empty when it used the original alone)."""
        return list(self.trace[self.best_index].crops) if self.trace else []

    # ---- serialisation ---------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "answer": self.answer,
            "boxes": [list(b) for b in self.boxes],
            "trace": [it.to_dict() for it in self.trace],
            "cost": self.cost.to_dict(),
            "best_index": self.best_index,
            "method": self.method,
            "question": self.question,
            "image_size": list(self.image_size),
            "params": jsonable(self.params),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Grounding":
        return cls(
            answer=d["answer"],
            boxes=[as_box(b) for b in d.get("boxes", [])],
            trace=[Iteration.from_dict(t) for t in d.get("trace", [])],
            cost=Cost.from_dict(d.get("cost", {})),
            best_index=int(d.get("best_index", 0)),
            method=d.get("method", "egg"),
            question=d.get("question", ""),
            image_size=tuple(d.get("image_size", (0, 0))),  # type: ignore[arg-type]
            params=d.get("params", {}),
        )

    def to_json(self) -> str:
        """One line of JSON (for JSON-lines files)."""
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> "Grounding":
        return cls.from_dict(json.loads(line))

    # ---- display --------------------------------------------------------------------------

    def __repr__(self) -> str:
        boxes = ", ".join("(" + ", ".join(f"{v:g}" for v in b) + ")" for b in self.boxes[:3])
        more = f", +{len(self.boxes) - 3}" if len(self.boxes) > 3 else ""
        return (f"Grounding(method={self.method!r}, answer={self.answer!r}, boxes=[{boxes}{more}], "
                f"states={len(self.trace)}, best_index={self.best_index}, image_size={tuple(self.image_size)})")

    def heatmap(self, state: int = 0, size: tuple[int, int] | None = None) -> np.ndarray:
        """State ``state``'s searched maps upsampled to image pixels, as one float array of
        shape (height, width) scaled to [0, 1] (zero where no searched grid lies), ready to
        overlay the way pytorch-grad-cam users overlay a CAM (``egg.figures.overlay``).

        size: (width, height) of the output (default: the image's). Each grid is resized
        bilinearly onto the pixel box it covers (``Iteration.map_boxes``); where grids
        overlap (a crop's over the original's place) the larger value is kept.
        """
        from PIL import Image

        W, H = (int(v) for v in (size or self.image_size))
        if W < 1 or H < 1:
            raise ValueError(f"heatmap size must be positive (width, height), got {(W, H)}")
        it = self.trace[state]
        if not it.maps:
            raise ValueError(f"state {state} has no map (the stopping rule did not need it)")
        sx, sy = W / float(self.image_size[0]), H / float(self.image_size[1])
        out = np.zeros((H, W), dtype=np.float64)
        for gi in (it.searched or range(len(it.maps))):
            m = np.nan_to_num(np.asarray(it.maps[gi], dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            x0, y0, x1, y1 = it.map_boxes[gi]
            c0, r0 = max(0, int(round(x0 * sx))), max(0, int(round(y0 * sy)))
            c1, r1 = min(W, int(round(x1 * sx))), min(H, int(round(y1 * sy)))
            if c1 <= c0 or r1 <= r0:
                continue
            full = (int(round((x1 - x0) * sx)) or 1, int(round((y1 - y0) * sy)) or 1)
            up = np.asarray(Image.fromarray(m.astype(np.float32)).resize(full, Image.BILINEAR))
            ox, oy = c0 - int(round(x0 * sx)), r0 - int(round(y0 * sy))
            patch = up[oy:oy + (r1 - r0), ox:ox + (c1 - c0)]
            out[r0:r0 + patch.shape[0], c0:c0 + patch.shape[1]] = np.maximum(
                out[r0:r0 + patch.shape[0], c0:c0 + patch.shape[1]], patch)
        peak = out.max()
        return out / peak if peak > 0 else out

    def plot(self, ax=None, image=None, iteration: int | None = None, alpha: float = 0.5, cmap: str = "inferno"):
        """Image, the relevance map(s) of one state overlaid, and the boxes (best = solid).

        image: needed when the Grounding was loaded from JSON (``image`` is not saved).
        iteration: which state's maps to overlay (default: state 0, the original's map,
            plus its crops' maps if any). Returns the matplotlib Axes.
        """
        import matplotlib.pyplot as plt

        from ..figures.draw import _clean_axes, draw_boxes, overlay_map, show_image

        img = image if image is not None else self.image
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 6))
        if img is not None:
            show_image(ax, img)
        else:
            ax.set_xlim(0, self.image_size[0])
            ax.set_ylim(self.image_size[1], 0)
            _clean_axes(ax)
        if self.trace:
            it = self.trace[0 if iteration is None else iteration]
            for m, mb in zip(it.maps, it.map_boxes):
                overlay_map(ax, m, mb, alpha=alpha, cmap=cmap, interpolation="bilinear")
        draw_boxes(ax, self.boxes)
        ax.set_title(f"{self.question}\n-> {self.answer!r}  ({self.method}, state {self.best_index})", fontsize=9)
        return ax


def jsonable(v):
    """``v`` as plain JSON values: numpy scalars and arrays unwrapped, non-finite floats as
    "inf" / "-inf" / "nan" (strict JSON has none), callables by name, anything else by repr.
    The one converter for results, records and record keys."""
    if isinstance(v, (str, bool, int)) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return jsonable(v.item())
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if callable(v):
        return getattr(v, "name", None) or getattr(v, "__name__", None) or repr(v)
    return repr(v)


def _unjson_float(v) -> float:
    return float(v) if v is not None else float("nan")


