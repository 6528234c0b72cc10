"""Drawing primitives every figure shares: an image, a token-grid map over the pixels it
covers, ranked boxes, ground-truth evidence."""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: Colours of ranked boxes (best first); evidence (ground truth) is drawn in white, dotted.
BOX_COLOURS = ["#00e5ff", "#76ff03", "#ffea00", "#ff4081", "#ff9100", "#d500f9"]
EVIDENCE_COLOUR = "#ffffff"
MAP_CMAP = "inferno"


def _image(g, image):
    from ..images import load_image

    img = image if image is not None else getattr(g, "image", None)
    return load_image(img) if img is not None else None


def _clean_axes(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def show_image(ax, image, title: str | None = None):
    """The image in original pixels (y down), no ticks."""
    from ..images import load_image

    img = load_image(image)
    ax.imshow(img)
    W, H = img.size
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    _clean_axes(ax)
    if title:
        ax.set_title(title)
    return ax


def overlay_map(ax, grid_map: np.ndarray, box, alpha: float = 0.55, cmap: str = MAP_CMAP,
                interpolation: str = "nearest"):
    """Draw a token-grid map (normalised to its max) over the image region ``box`` covers.
    Zero / non-finite maps are skipped. Returns the AxesImage or None."""
    m = np.asarray(grid_map, dtype=np.float64)
    if m.size == 0 or not np.isfinite(m).all() or m.max() <= 0:
        return None
    x0, y0, x1, y1 = (float(v) for v in box)
    xl, yl = ax.get_xlim(), ax.get_ylim()
    im = ax.imshow(m / m.max(), extent=(x0, x1, y1, y0), alpha=alpha, cmap=cmap, vmin=0, vmax=1,
                   interpolation=interpolation)
    ax.set_xlim(xl)
    ax.set_ylim(yl)
    return im


def draw_boxes(ax, boxes: Sequence, labels: Sequence[str] | None = None, colours=None, lw: float = 2.0):
    """Ranked boxes: the best solid and thicker, the rest dashed; optional text labels."""
    from matplotlib.patches import Rectangle

    colours = colours or BOX_COLOURS
    for i, b in enumerate(boxes):
        x0, y0, x1, y1 = (float(v) for v in b)
        c = colours[i % len(colours)]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=lw * (1.3 if i == 0 else 0.8),
                               ls="-" if i == 0 else "--", ec=c))
        if labels is not None and i < len(labels) and labels[i]:
            ax.text(x0, y0, labels[i], color="black", fontsize=8, va="top", ha="left",
                    bbox=dict(boxstyle="square,pad=0.1", fc=c, ec="none", alpha=0.9), clip_on=True)


def draw_evidence(ax, gt_boxes: Sequence, label: bool = True):
    """Ground-truth evidence boxes, white dotted."""
    from matplotlib.patches import Rectangle

    for b in gt_boxes or []:
        x0, y0, x1, y1 = (float(v) for v in b)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.6, ls=":", ec=EVIDENCE_COLOUR))
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.6, ls="-", ec="black"))
    if label and gt_boxes:
        x0, y0 = float(gt_boxes[0][0]), float(gt_boxes[0][3])
        ax.text(x0, y0, "evidence", color="black", fontsize=8, va="top", ha="left",
                bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8), clip_on=True)


def plot_grid(ax, grid_map: np.ndarray, title: str | None = None, cmap: str = MAP_CMAP, colorbar: bool = False,
              aspect: float = 1.0):
    """A token grid as cells (nearest interpolation), row 0 at the top; ``aspect`` = cell
    height / cell width in image pixels (``cell_aspect``), so the grid has the image's shape."""
    m = np.asarray(grid_map, dtype=np.float64)
    im = ax.imshow(m, cmap=cmap, interpolation="nearest", aspect=aspect)
    _clean_axes(ax)
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return im


def overlay(image, heatmap: np.ndarray, alpha: float = 0.5, cmap: str = MAP_CMAP):
    """The image with a pixel heatmap (``Grounding.heatmap``, values in [0, 1]) blended over
    it through a colour map, as an RGB PIL image: pytorch-grad-cam's ``show_cam_on_image``."""
    import matplotlib
    from PIL import Image

    from ..images import load_image

    img = load_image(image)
    h = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float64)), 0.0, 1.0)
    if h.shape != (img.size[1], img.size[0]):
        raise ValueError(f"heatmap shape {h.shape} does not match the image (height, width) "
                         f"{(img.size[1], img.size[0])}; call g.heatmap(size=image.size)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    colour = matplotlib.colormaps[cmap](h)[..., :3]
    base = np.asarray(img, dtype=np.float64) / 255.0
    out = (1 - alpha) * base + alpha * colour
    return Image.fromarray(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8))
