"""One record per (item, method configuration), its key, and the JSON-lines store."""
from __future__ import annotations

import hashlib
import json
import math
import weakref
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .. import synthetic as bench
from ..adapters import as_adapter
from ..method.boxes import box_center, evidence_iou, point_in_box
from ..method.result import jsonable
from .registry import FE_BACKWARD, FE_FORWARD


@dataclass
class Record:
    """One method's result on one benchmark item.

    variant: the label the run asked for (e.g. "egg k=1"); ``method``/``params`` are what
        was run. The label is not part of the key: the same configuration under two
        labels is computed once.
    score: the family's metric in [0, 1]; correct: score >= 0.5.
    boxes: the method's evidence boxes (original pixels, best first); gt_boxes: truth.
    iou: best IoU of the first box with any gt box (NaN without a box).
    pointing: 1.0 if the first box's centre is inside a gt box, else 0.0 (NaN without a box).
    evidence_recall: fraction of gt boxes whose centre lies in any of the method's boxes.
    evidence_fraction, n_evidence: the item's gt area / image area and number of gt boxes.
    entropy, max_prob: next-token distribution on the original image (the first map's),
        where the method computes it (EGG, grad-based ViCrop), else NaN.
    forward, backward, images_encoded, generated_tokens, seconds: cost counters;
        cost_fe = FE_FORWARD * forward + FE_BACKWARD * backward.
    iterations: zoom iterations performed (states - 1); best_index: the state used.
    model: "<model fingerprint>:<code fingerprint>" (``run``); key: the resume key.
    """

    family: str
    index: int
    method: str
    params: dict
    prediction: str
    score: float
    correct: bool
    boxes: list = field(default_factory=list)
    gt_boxes: list = field(default_factory=list)
    iou: float = math.nan
    pointing: float = math.nan
    evidence_recall: float = math.nan
    evidence_fraction: float = math.nan
    n_evidence: int = 0
    entropy: float = math.nan
    max_prob: float = math.nan
    forward: int = 0
    backward: int = 0
    images_encoded: int = 0
    generated_tokens: int = 0
    seconds: float = math.nan
    cost_fe: float = 0.0
    iterations: int = 0
    best_index: int = 0
    variant: str = ""
    split: str = "test"
    seed: int = 0
    model: str = ""
    key: str = ""
    question: str = ""
    answers: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready fields (NaN as None)."""
        return {k: _nan_to_none(v) for k, v in asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False, allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> "Record":
        return cls.from_dict(json.loads(line))

    @classmethod
    def from_dict(cls, d: Mapping) -> "Record":
        """A record from ``to_dict`` output; unknown keys (extras a writer added) are ignored."""
        names = {f.name: f for f in fields(cls)}
        kw = {}
        for k, v in d.items():
            if k not in names:
                continue
            if names[k].type in ("float", float) and v is None:
                v = math.nan
            kw[k] = v
        return cls(**kw)


def _nan_to_none(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return v


def save_records(records: Iterable[Record], path) -> None:
    """Write records as JSON lines (overwrites)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(r.to_json() + "\n")


def read_json_lines(path) -> list[dict]:
    """The JSON objects of a JSON-lines file (``egg.runs.store.read_lines``: torn, corrupt
    and non-UTF-8 lines are skipped with a warning that counts them). A missing file gives []."""
    from .store import read_lines

    return read_lines(path)[0]


def load_records(path) -> list[Record]:
    """The records of a records file: the first per key, failures and other lines left out."""
    from .store import read_lines, split_outcomes

    out = []
    for d in split_outcomes(read_lines(path)[0])[0].values():
        try:
            out.append(Record.from_dict(d))
        except (ValueError, TypeError, KeyError):
            continue
    return out


def record_key(model: str, family: str, split: str, seed: int, index: int, method: str, params: Mapping) -> str:
    blob = json.dumps([model, family, split, int(seed), int(index), method, jsonable(dict(params))],
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


#: Bump when the way a Record is computed from a Grounding changes (invalidates old records).
RECORD_VERSION = 1
#: The modules whose code decides a record's content (``code_fingerprint``).
CODE_PATHS = ("adapters", "baselines", "method", "synthetic", "api.py", "images.py", "metrics.py", "datasets.py",
              "runs/registry.py", "runs/records.py")
_CODE_FP: dict = {}


def code_fingerprint() -> str:
    """A short hash of the source of the modules that compute records (``CODE_PATHS``) and
    ``RECORD_VERSION``: records computed by other code are never reused."""
    pkg = Path(__file__).resolve().parent.parent
    files = []
    for rel in CODE_PATHS:
        p = pkg / rel
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p] if p.is_file() else []
    stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    if _CODE_FP.get("stamp") != stamp:
        h = hashlib.sha256(f"record-version:{RECORD_VERSION}".encode())
        for f in files:
            h.update(str(f.relative_to(pkg)).encode())
            h.update(f.read_bytes())
        _CODE_FP.update(stamp=stamp, fp=h.hexdigest()[:12])
    return _CODE_FP["fp"]


def model_fingerprint(vlm) -> str:
    """A short hash of the model's config and a strided sample of every parameter tensor
    (cheap even for large models); the path it was loaded from does not enter."""
    import torch

    model = as_adapter(vlm).model
    try:
        return _FINGERPRINTS[model]
    except (KeyError, TypeError):
        pass
    h = hashlib.sha256()
    cfg = model.config.to_dict()
    for k in ("_name_or_path", "transformers_version"):
        cfg.pop(k, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step][:4096].to(torch.float32).cpu().numpy()
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(sample.tobytes())
    fp = h.hexdigest()[:16]
    try:
        _FINGERPRINTS[model] = fp
    except TypeError:
        pass
    return fp


def _first_box_stats(boxes, gt) -> tuple[float, float, float]:
    if not boxes or not gt:
        return math.nan, math.nan, math.nan
    c = box_center(boxes[0])
    point = 1.0 if any(point_in_box(c, g) for g in gt) else 0.0
    recall = float(np.mean([any(point_in_box(box_center(g), bb) for bb in boxes) for g in gt]))
    return evidence_iou(boxes, gt), point, recall


def make_record(g, item, *, family: str, index: int, method: str, params: Mapping, variant: str = "",
                split: str = "test", seed: int = 0, model: str = "") -> Record:
    """A Record from a method's Grounding on ``item`` (scored with the family's metric)."""
    pred = g.answer
    score = float(bench.score(family, pred, item))
    boxes = [[float(v) for v in b] for b in g.boxes]
    gt = [[float(v) for v in b] for b in item.boxes]
    iou_, point, recall = _first_box_stats(boxes, gt)
    ent = mp = math.nan
    if g.trace:
        ent, mp = float(g.trace[0].entropy), float(g.trace[0].max_prob)
    c = g.cost
    return Record(
        family=family, index=int(index), method=method, params=dict(params), prediction=pred,
        score=score, correct=bool(score >= 0.5), boxes=boxes, gt_boxes=gt, iou=iou_, pointing=point,
        evidence_recall=recall, evidence_fraction=float(item.evidence_fraction), n_evidence=len(item.boxes),
        entropy=ent, max_prob=mp, forward=int(c.forward), backward=int(c.backward),
        images_encoded=int(c.images_encoded), generated_tokens=int(c.generated_tokens),
        seconds=float(c.wall_time), cost_fe=FE_FORWARD * c.forward + FE_BACKWARD * c.backward,
        iterations=max(0, len(g.trace) - 1) if method not in ("base",) else 0,
        best_index=int(g.best_index), variant=variant or method, split=split, seed=int(seed), model=model,
        key=record_key(model, family, split, seed, index, method, params), question=item.question,
        answers=list(item.answers),
    )
