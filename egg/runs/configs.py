"""The run configurations of the notebooks: stopping rules, ablation axes, multi-evidence, and
the paper's own choices they are compared against."""
from __future__ import annotations

from typing import Mapping, Sequence


from ..adapters import as_adapter


def stopping_configs(max_iterations: int = 4, fixed: Sequence[int] = (0, 1, 2, 3, 4),
                     min_crop_area: float | None = None) -> dict[str, tuple[str, dict]]:
    """Label -> ("egg", options) for the stopping rules of docs/method.md section 4 (the label
    "spatial-entropy" is the paper's rule; fixed N = 0 .. 4; resolution floor default
    = the rule's, 32 x 32 px)."""
    cfg: dict[str, tuple[str, dict]] = {
        "spatial-entropy": ("egg", {"stopping": "spatial-entropy", "max_iterations": max_iterations}),
        "confidence": ("egg", {"stopping": "confidence", "max_iterations": max_iterations}),
    }
    for k in fixed:
        cfg[f"fixed N={k}"] = ("egg", {"stopping": "fixed", "fixed_n": int(k), "max_iterations": max_iterations})
    res = {"stopping": "resolution", "max_iterations": max_iterations}
    if min_crop_area is not None:
        res["min_crop_area"] = float(min_crop_area)
    cfg["resolution"] = ("egg", res)
    return cfg


#: The paper's choices on the ablated axes (C4; "all" = every decoder layer).
PAPER_CHOICES = {"objective": "entropy", "token_index": 1, "num_layers": "all", "k": 2, "sigma": 1.5,
                 "threshold": "elbow"}


#: The axes claim C4 is about.
C4_AXES = ("token_index", "num_layers", "k")


def layer_values(num_layers: int) -> list:
    """A few truncations of an L-layer decoder: L/4, L/2, 3L/4 (rounded, >= 1, deduplicated) and "all"."""
    L = int(num_layers)
    vals = sorted({max(1, round(L * f)) for f in (0.25, 0.5, 0.75)} - {L})
    return [*vals, "all"]


def ablation_configs(vlm=None, num_layers: int | None = None, sigmas: Sequence[float] = (0.5, 1.5, 3.0),
                     ks: Sequence[int] = (1, 2, 3, 4), token_indices: Sequence[int] = (1, 2),
                     objectives: Sequence[str] = ("entropy", "log_max_prob", "kl_to_uniform", "nucleus_entropy"),
                     thresholds: Sequence[str] = ("elbow", "otsu", "top-percent"),
                     base_options: Mapping | None = None):
    """(configs, axes) for the ablations: configs = label -> ("egg", options) with the
    paper's setting once as "default"; axes = axis -> [(value, label), ...] (the default's
    label where the value is the paper's). Every variant changes one setting of the default."""
    if num_layers is None:
        num_layers = as_adapter(vlm).num_layers
    base = dict(base_options or {})
    configs: dict[str, tuple[str, dict]] = {"default": ("egg", dict(base))}
    axes: dict[str, list] = {}

    def add(axis, value, opts):
        if value == PAPER_CHOICES[axis]:
            axes.setdefault(axis, []).append((value, "default"))
            return
        label = f"{axis}={value}"
        configs[label] = ("egg", {**base, **opts})
        axes.setdefault(axis, []).append((value, label))

    for o in objectives:
        add("objective", o, {"objective": o})
    for t in token_indices:
        add("token_index", int(t), {"token_index": int(t)})
    for lv in layer_values(num_layers):
        add("num_layers", lv, {"num_layers": None if lv == "all" else int(lv)})
    for k in ks:
        add("k", int(k), {"k": int(k)})
    for s in sigmas:
        add("sigma", float(s), {"sigma": float(s)})
    for t in thresholds:
        add("threshold", t, {"threshold": t})
    return configs, axes


MULTI_FAMILIES = ["vstar", "doc", "info", "gqa"]


def multi_configs() -> dict[str, tuple[str, dict]]:
    return {"base": ("base", {}), "egg k=1": ("egg", {"k": 1}), "egg k=2": ("egg", {"k": 2})}
