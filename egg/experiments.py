"""Experiments behind the notebooks: run methods over the benchmark, tabulate, and judge claims.

>>> from egg import experiments as ex
>>> vlm = ex.load_vlm()                                    # the embedded reference model
>>> df = ex.run(vlm, ["base", "egg"], families=["text"], n=20, path="results/records.jsonl")
>>> ex.accuracy_table(df)
>>> print(ex.verdict_c1(df))

Everything the notebooks show is computed here (the notebooks only call these functions),
so the tests reach all of it.

Conventions
-----------
* **Scores** are the family's metric per item in [0, 1] (``bench.score``); tables show them
  as percentage points. ``correct`` = score >= 0.5 (used by McNemar's test).
* **Cost** is counted in *forward-equivalents* (FE): one full-sequence decoder forward
  pass (a generation's prefill included) = 1 FE, one backward pass = 2 FE
  (``FE_FORWARD``, ``FE_BACKWARD``). Vision-tower encodings and incremental decoding
  steps are reported separately and not folded in. Wall-clock seconds are kept in the
  records but never shown in tables (they are not reproducible).
* **Evidence size buckets** (localisation): the item's evidence fraction = total area of
  its ground-truth boxes / image area; small < 0.3 %, medium 0.3 % - 1 %, large >= 1 %
  (``SIZE_BUCKETS``).
* **Uncertainty**: 95 % percentile-bootstrap intervals (``egg.stats``, 2000 resamples,
  seed 0), paired over items when two methods are compared; exact McNemar p-values on
  ``correct``.
* **Verdicts** (``verdict_c1`` ... ``verdict_c4``, ``verdict_multi``) read the numbers and
  return a ``Verdict`` whose status is "supported", "inconclusive" (right direction, CI
  includes 0) or "not supported", with a sentence quoting the numbers it was decided on.

Records and resuming
--------------------
``run`` writes one ``Record`` per (item, method configuration) as a JSON line, flushed
per record. A record's key hashes (model fingerprint, code fingerprint, family, split,
seed, item index, method, effective options), so an interrupted run resumes where it
stopped, records of a different model or of other method code in the same file are never
reused, and different notebooks sharing one file reuse each other's work.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import weakref
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import bench, metrics, stats
from .adapters import Cost, as_adapter
from .outputs import REPO_ROOT, resolve_dir, silence_libraries
from .method.boxes import box_center, evidence_iou, point_in_box

FE_FORWARD = 1.0
FE_BACKWARD = 2.0

#: (name, lower, upper) bounds on the evidence fraction (gt area / image area).
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 0.003),
    ("medium", 0.003, 0.01),
    ("large", 0.01, math.inf),
)
#: |delta| below this many points counts as "about neutral" on the control family (C1).
NEUTRAL_BAND = 2.0
N_BOOT = 2000
BOOT_SEED = 0

VICROP_METHODS = ["vicrop-rel-att", "vicrop-grad-att", "vicrop-pure-grad"]
MAIN_METHODS = ["base", *VICROP_METHODS, "egg", "random", "oracle"]
NEEDS_BOXES = ("random", "oracle")  # bounds built from ground-truth boxes: skipped where an item has none


# =========================================================================== methods


def _counter(vlm) -> Cost:
    return as_adapter(vlm).counter


def _base(vlm, item, *, max_new_tokens: int = 8):
    """The model's own answer from the original image alone, as a Grounding (no boxes)."""
    import time

    from .api import answer
    from .method.result import Grounding

    c0, t0 = _counter(vlm).copy(), time.perf_counter()
    ans = answer(vlm, item.image, item.question, max_new_tokens=max_new_tokens)
    cost = _counter(vlm).copy() - c0
    cost.wall_time = time.perf_counter() - t0
    return Grounding(answer=ans, boxes=[], trace=[], cost=cost, best_index=0, method="base",
                     question=item.question, image_size=tuple(item.image.size),
                     params={"max_new_tokens": max_new_tokens})


def _egg(vlm, item, **opts):
    from .method.zoom import ground

    return ground(vlm, item.image, item.question, **opts)


def _make_vicrop(variant: str):
    def _vicrop(vlm, item, *, layer=None, window_sizes=None, max_new_tokens: int = 8):
        from .baselines import vicrop

        return vicrop(vlm, item.image, item.question, variant=variant, layer=layer,
                      window_sizes=window_sizes, max_new_tokens=max_new_tokens)

    _vicrop.__name__ = f"vicrop_{variant.replace('-', '_')}"
    _vicrop.__doc__ = f"ViCrop ({variant}): one crop from the model's map, appended as a second image."
    return _vicrop


def item_seed(item, offset: int = 0) -> int:
    """A per-item seed from (family, split, index, seed) (+ ``offset``), stable across runs."""
    m = item.meta
    s = f"{item.family}/{m.get('split')}/{m.get('index')}/{m.get('seed')}/{int(offset)}"
    return int(hashlib.sha256(s.encode()).hexdigest()[:8], 16)


def _random(vlm, item, *, seed_offset: int = 0, max_new_tokens: int = 8):
    """Crops of the ground-truth boxes' sizes at random positions, seeded per item."""
    from .baselines import random_box

    return random_box(vlm, item.image, item.question, size_like=list(item.boxes),
                      seed=item_seed(item, seed_offset), max_new_tokens=max_new_tokens)


def _oracle(vlm, item, *, max_ratio: float = 3.0, max_new_tokens: int = 8):
    from .baselines import oracle

    return oracle(vlm, item.image, item.question, list(item.boxes), max_ratio=max_ratio,
                  max_new_tokens=max_new_tokens)


#: name -> callable(vlm, item, **options) -> Grounding.
METHODS: dict[str, Callable] = {
    "base": _base,
    "vicrop-rel-att": _make_vicrop("rel-att"),
    "vicrop-grad-att": _make_vicrop("grad-att"),
    "vicrop-pure-grad": _make_vicrop("pure-grad"),
    "egg": _egg,
    "random": _random,
    "oracle": _oracle,
}


def _option_defaults(method: str) -> dict:
    """Keyword options of a method and their defaults (egg: those of ``egg.ground``)."""
    fn = METHODS[method]
    if inspect.unwrap(fn) is _egg:
        from .method.zoom import ground

        fn = ground
    sig = inspect.signature(fn)
    skip = {"vlm", "item", "image", "question"}
    return {k: p.default for k, p in sig.parameters.items()
            if k not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            and p.default is not inspect.Parameter.empty}


def effective_options(method: str, options: Mapping | None = None) -> dict:
    """The method's full options: its defaults updated with ``options`` (unknown names raise),
    so {} and {"k": 2} for "egg" are the same configuration (and the same record key)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {list(METHODS)}")
    defaults = _option_defaults(method)
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"method {method!r} has no option(s) {unknown}; valid: {sorted(defaults)}")
    out = {**defaults, **options}
    return {k: _jsonable(v) for k, v in sorted(out.items())}


def _jsonable(v):
    if isinstance(v, (str, bool, int)) or v is None:
        return v
    if isinstance(v, float):
        return v
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if callable(v):
        return getattr(v, "name", None) or getattr(v, "__name__", None) or repr(v)
    return repr(v)


# =========================================================================== records


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
    """The JSON objects of a JSON-lines file; blank, torn (an interrupted write) or corrupt
    lines are skipped. A missing file gives []."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict):
                out.append(d)
    return out


def load_records(path) -> list[Record]:
    """Records from a JSON-lines file (``read_json_lines``); lines that are not records are skipped."""
    out = []
    for d in read_json_lines(path):
        try:
            out.append(Record.from_dict(d))
        except (ValueError, TypeError, KeyError):
            continue
    return out


def _append(path: Path, rec: Record) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # make sure a previous interrupted write does not glue onto this line
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            needs_nl = f.read(1) != b"\n"
    else:
        needs_nl = False
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if needs_nl else "") + rec.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())


def record_key(model: str, family: str, split: str, seed: int, index: int, method: str, params: Mapping) -> str:
    blob = json.dumps([model, family, split, int(seed), int(index), method, _jsonable(dict(params))],
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


#: Bump when the way a Record is computed from a Grounding changes (invalidates old records).
RECORD_VERSION = 1
#: The modules whose code decides a record's content (``code_fingerprint``).
CODE_PATHS = ("adapters", "baselines", "bench", "api.py", "images.py", "metrics.py", "objectives.py",
              "regions.py", "relevance.py", "stopping.py", "zoom.py")
_CODE_FP: dict = {}


def code_fingerprint() -> str:
    """A short hash of the source of the modules that compute records (``CODE_PATHS``) and
    ``RECORD_VERSION``: records computed by other code are never reused."""
    pkg = Path(__file__).resolve().parent
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


# =========================================================================== running


@dataclass(frozen=True)
class Spec:
    """One method configuration of a run: label (the ``variant``), method name, options."""

    label: str
    method: str
    params: dict


def make_specs(methods, method_options: Mapping | None = None) -> list[Spec]:
    """Method configurations from ``run``'s arguments.

    methods: a method name, a list of names (options from ``method_options[name]``), or a
        mapping label -> method name | (method name, options) for several configurations
        of one method (e.g. {"egg k=1": ("egg", {"k": 1}), "egg k=2": ("egg", {"k": 2})}).
    """
    method_options = dict(method_options or {})
    if isinstance(methods, str):
        methods = [methods]
    out: list[Spec] = []
    if isinstance(methods, Mapping):
        for label, v in methods.items():
            if isinstance(v, str):
                m, opts = v, method_options.get(v, {})
            else:
                m, opts = v
            out.append(Spec(str(label), m, effective_options(m, opts)))
    else:
        for m in methods:
            out.append(Spec(m, m, effective_options(m, method_options.get(m, {}))))
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate method labels: {labels}")
    return out


class ItemSource:
    """Items of a procedural family or of a real benchmark (``egg.benchmarks``), by index,
    scored with that family's or benchmark's own metric."""

    def __init__(self, name: str, split: str | None = None, seed: int = 0, data=None):
        self.name = name
        self.seed = int(seed)
        if name in bench.FAMILIES:
            self.kind, self.family, self.size = "procedural", name, None
            self.split = split or "test"
            return
        from . import benchmarks

        if name not in benchmarks.names():
            raise ValueError(f"unknown family or benchmark {name!r}; expected a procedural family "
                             f"{bench.families()} or a real benchmark {benchmarks.names()}")
        b = benchmarks.get(name)
        if split not in (None, "test", b.split):
            raise ValueError(f"benchmark {name!r} has only split {b.split!r} (got {split!r})")
        self.kind, self.family, self.split = "real", b.family, b.split
        self.data = benchmarks.open_benchmark(name, path=data)
        self.size = len(self.data)

    def item(self, i: int):
        if self.kind == "procedural":
            return bench.item(self.family, self.split, i, self.seed)
        it = self.data[i]
        it.meta.update(split=self.split, index=int(i), seed=self.seed)
        return it

    def score(self, prediction: str, item) -> float:
        if self.kind == "procedural":
            return float(bench.score(self.family, prediction, item))
        from . import benchmarks

        return float(benchmarks.score(self.name, prediction, item))

    def record(self, g, item, *, index: int, method: str, params: Mapping, variant: str = "",
               model: str = "") -> "Record":
        """``make_record`` under this source's name, scored with its own metric."""
        rec = make_record(g, item, family=self.family, index=index, method=method, params=params,
                          variant=variant, split=self.split, seed=self.seed, model=model)
        s = self.score(g.answer, item)
        return replace(rec, family=self.name, score=s, correct=bool(s >= 0.5),
                       key=record_key(model, self.name, self.split, self.seed, index, method, params))


def family_of(name: str) -> str:
    """The procedural family a family or real-benchmark name stands for ("docvqa" -> "doc")."""
    if name in bench.FAMILIES:
        return name
    from . import benchmarks

    return benchmarks.get(name).family if name in benchmarks.names() else name


def run(vlm, methods, families=None, n: int = 20, split: str = "test", seed: int = 0,
        method_options: Mapping | None = None, path=None, progress: bool = True,
        data: Mapping | None = None) -> pd.DataFrame:
    """Run ``methods`` on items 0..n-1 of each family; one row per (item, configuration).

    families: procedural family names (None: all, ``bench.families()``) and/or real
        benchmarks (``egg.benchmarks.names()``, e.g. "textvqa", "pope-adversarial"), which
        are scored with their official metrics; n is capped at a benchmark's size.
    data: {benchmark: local copy of its dataset} for real benchmarks (else the Hub cache).
    methods / method_options: see ``make_specs``.
    path: JSON-lines file; each new record is appended and flushed as soon as it exists,
        and records already there (same model, family, split, seed, index, method and
        effective options) are reused instead of recomputed -- so an interrupted run
        resumes, and notebooks sharing a file share work.
    progress: a tqdm progress bar (``tqdm.auto``).
    Returns a DataFrame (``records_frame``) in a fixed order: family, item, configuration.
    """
    from tqdm.auto import tqdm

    specs = make_specs(methods, method_options)
    fams = list(bench.families() if families is None else ([families] if isinstance(families, str) else families))
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    sources = [ItemSource(f, split, seed, (data or {}).get(f)) for f in fams]
    counts = [int(n) if s.size is None else min(int(n), s.size) for s in sources]
    fp = f"{model_fingerprint(vlm)}:{code_fingerprint()}"
    p = Path(path) if path is not None else None
    done: dict[str, Record] = {}
    if p is not None:
        for r in load_records(p):
            done.setdefault(r.key, r)
    out: list[Record] = []
    skipped: set[str] = set()
    with tqdm(total=sum(counts) * len(specs), disable=not progress, desc="egg.run") as bar:
        for src, count in zip(sources, counts):
            for i in range(count):
                item = None
                for s in specs:
                    key = record_key(fp, src.name, src.split, seed, i, s.method, s.params)
                    rec = done.get(key)
                    if rec is None:
                        if item is None:
                            item = src.item(i)
                        if s.method in NEEDS_BOXES and not item.boxes:
                            skipped.add(f"{s.label} on {src.name}")
                            bar.update(1)
                            continue
                        g = METHODS[s.method](vlm, item, **s.params)
                        rec = src.record(g, item, index=i, method=s.method, params=s.params, variant=s.label,
                                         model=fp)
                        if p is not None:
                            _append(p, rec)
                        done[key] = rec
                    out.append(replace(rec, variant=s.label))
                    bar.update(1)
    if skipped:
        import warnings

        warnings.warn("skipped (no ground-truth boxes): " + ", ".join(sorted(skipped)), stacklevel=2)
    return records_frame(out)


COLUMNS = [f.name for f in fields(Record)]


def records_frame(records: Sequence[Record]) -> pd.DataFrame:
    """Records as a DataFrame (one column per Record field)."""
    rows = [asdict(r) for r in records]
    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("score", "iou", "pointing", "evidence_recall", "evidence_fraction", "entropy", "max_prob",
              "seconds", "cost_fe"):
        df[c] = df[c].astype(float)
    for c in ("index", "forward", "backward", "images_encoded", "generated_tokens", "iterations",
              "best_index", "n_evidence", "seed"):
        df[c] = df[c].astype(int)
    df["correct"] = df["correct"].astype(bool)
    return df


# =========================================================================== helpers for tables


def _order(values: Iterable, preferred: Sequence | None = None) -> list:
    """Unique values in first-seen order (preferred ones first, in their order)."""
    seen = list(dict.fromkeys(values))
    if preferred:
        return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]
    return seen


def _family_order(df) -> list[str]:
    return _order(df["family"], bench.families())


def size_bucket(fraction: float) -> str:
    for name, lo, hi in SIZE_BUCKETS:
        if lo <= fraction < hi:
            return name
    return SIZE_BUCKETS[-1][0]


def _paired(df: pd.DataFrame, a: str, b: str, value: str = "score", families=None) -> pd.DataFrame:
    """Items scored by both variants a and b: columns a, b (values), a_correct, b_correct."""
    sub = df if families is None else df[df["family"].isin(list(families))]
    cols = ["family", "index", value, "correct"]
    x = sub[sub["variant"] == a][cols].rename(columns={value: "a", "correct": "a_correct"})
    y = sub[sub["variant"] == b][cols].rename(columns={value: "b", "correct": "b_correct"})
    m = x.merge(y, on=["family", "index"], how="inner")
    return m.dropna(subset=["a", "b"])


@dataclass
class Delta:
    """b - a over paired items, in points (x100 for scores) with a 95 % bootstrap CI."""

    mean: float
    lo: float
    hi: float
    n: int
    p: float = math.nan
    a: float = math.nan
    b: float = math.nan

    def fmt(self, unit: str = " points", digits: int = 1) -> str:
        if self.n == 0:
            return "n/a (no paired items)"
        return f"{self.mean:+.{digits}f}{unit} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"

    @property
    def significant_positive(self) -> bool:
        return self.n > 0 and self.lo > 0

    @property
    def significant_negative(self) -> bool:
        return self.n > 0 and self.hi < 0


def paired_delta(df: pd.DataFrame, a: str, b: str, value: str = "score", families=None,
                 scale: float = 100.0) -> Delta:
    """Mean of (b - a) over items both variants have (``value`` column), with a paired
    bootstrap CI and (for value == "score") McNemar's p on ``correct``."""
    m = _paired(df, a, b, value, families)
    if len(m) == 0:
        return Delta(math.nan, math.nan, math.nan, 0)
    mean, lo, hi = stats.paired_bootstrap(m["a"].to_numpy(float), m["b"].to_numpy(float), n_boot=N_BOOT,
                                          seed=BOOT_SEED)
    p = stats.mcnemar(m["a_correct"].to_numpy(bool), m["b_correct"].to_numpy(bool)) if value == "score" else math.nan
    return Delta(mean * scale, lo * scale, hi * scale, len(m), p, float(m["a"].mean()) * scale,
                 float(m["b"].mean()) * scale)


def _ci(x, scale: float = 100.0) -> tuple[float, float, float]:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m, lo, hi = stats.bootstrap_ci(x, n_boot=N_BOOT, seed=BOOT_SEED)
    return m * scale, lo * scale, hi * scale


# =========================================================================== tables


def accuracy_table(df: pd.DataFrame, families: Sequence[str] | None = None) -> pd.DataFrame:
    """Method (rows) x family (columns): mean score in points (POPE: accuracy), plus a
    "pope F1" column (``metrics.pope``, points) when POPE is present. Like the paper's
    Table 1."""
    fams = list(families) if families is not None else _family_order(df)
    variants = _order(df["variant"])
    t = (df[df["family"].isin(fams)].groupby(["variant", "family"])["score"].mean() * 100).unstack("family")
    t = t.reindex(index=variants, columns=fams)
    if "pope" in fams:
        f1 = {}
        for v in variants:
            sub = df[(df["variant"] == v) & (df["family"] == "pope")]
            f1[v] = (metrics.pope(list(sub["prediction"]), [a[0] for a in sub["answers"]])["f1"] * 100
                     if len(sub) else math.nan)
        t["pope F1"] = pd.Series(f1)
    t.index.name = "method"
    t.columns.name = None
    return t


def delta_table(df: pd.DataFrame, baseline: str = "base", pooled: Mapping[str, Sequence[str]] | None = None,
                methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Per method and family: accuracy of the baseline and the method, delta (points) with
    a paired 95 % bootstrap CI, McNemar p-value and n. ``pooled`` adds rows over groups
    of families (default: "detail (pooled)" = the detail-critical families present)."""
    fams = _family_order(df)
    if pooled is None:
        detail = [f for f in fams if family_of(f) in bench.DETAIL_FAMILIES]
        pooled = {"detail (pooled)": detail} if len(detail) > 1 else {}
    groups = [(f, [f]) for f in fams] + [(k, list(v)) for k, v in pooled.items()]
    rows = []
    for v in (methods or [x for x in _order(df["variant"]) if x != baseline]):
        for name, fs in groups:
            d = paired_delta(df, baseline, v, families=fs)
            if d.n == 0:
                continue
            rows.append({"method": v, "family": name, "n": d.n, baseline: d.a, "accuracy": d.b, "delta": d.mean,
                         "ci_lo": d.lo, "ci_hi": d.hi, "p_mcnemar": d.p})
    return pd.DataFrame(rows, columns=["method", "family", "n", baseline, "accuracy", "delta", "ci_lo", "ci_hi",
                                       "p_mcnemar"])


def delta_summary(dt: pd.DataFrame) -> pd.DataFrame:
    """A ``delta_table`` as method x family strings "+3.0 [-1.2, 7.5] p=0.21" for display."""
    if dt.empty:
        return pd.DataFrame()
    s = dt.assign(cell=[f"{r.delta:+.1f} [{r.ci_lo:+.1f}, {r.ci_hi:+.1f}] p={r.p_mcnemar:.2f}"
                        for r in dt.itertuples()])
    t = s.pivot(index="method", columns="family", values="cell")
    t = t.reindex(index=_order(dt["method"]), columns=_order(dt["family"]))
    t.columns.name = None
    return t


def localisation_table(df: pd.DataFrame, methods: Sequence[str] | None = None, overall: bool = True) -> pd.DataFrame:
    """IoU and pointing accuracy (points, with 95 % bootstrap CIs) by method and evidence
    size bucket (``SIZE_BUCKETS``; "all" = every bucket). Methods without boxes are left out."""
    sub = df[np.isfinite(df["iou"].to_numpy(float))].copy()
    if methods is not None:
        sub = sub[sub["variant"].isin(list(methods))]
    sub["bucket"] = [size_bucket(f) for f in sub["evidence_fraction"]]
    buckets = [b[0] for b in SIZE_BUCKETS] + (["all"] if overall else [])
    rows = []
    for v in _order(sub["variant"], methods):
        for b in buckets:
            s = sub[sub["variant"] == v] if b == "all" else sub[(sub["variant"] == v) & (sub["bucket"] == b)]
            if len(s) == 0:
                continue
            i, ilo, ihi = _ci(s["iou"])
            p, plo, phi = _ci(s["pointing"])
            rows.append({"method": v, "bucket": b, "n": len(s), "iou": i, "iou_lo": ilo, "iou_hi": ihi,
                         "pointing": p, "pointing_lo": plo, "pointing_hi": phi})
    return pd.DataFrame(rows, columns=["method", "bucket", "n", "iou", "iou_lo", "iou_hi", "pointing",
                                       "pointing_lo", "pointing_hi"])


def bucket_legend() -> str:
    """The bucket thresholds, in words."""
    parts = []
    for name, lo, hi in SIZE_BUCKETS:
        if lo == 0:
            parts.append(f"{name} < {hi * 100:g} %")
        elif math.isinf(hi):
            parts.append(f"{name} >= {lo * 100:g} %")
        else:
            parts.append(f"{name} {lo * 100:g}-{hi * 100:g} %")
    return "evidence area / image area: " + ", ".join(parts)


def cost_table(df: pd.DataFrame, baseline: str | None = "base", seconds: bool = False) -> pd.DataFrame:
    """Mean cost per question by method: forward, backward passes, images encoded, decoded
    tokens, forward-equivalents (FE = forward + 2 x backward), FE relative to the baseline,
    zoom iterations. ``seconds`` adds mean wall time (not reproducible: keep it to files)."""
    cols = ["forward", "backward", "images_encoded", "generated_tokens", "cost_fe", "iterations"]
    if seconds:
        cols.append("seconds")
    t = df.groupby("variant")[cols].mean().reindex(_order(df["variant"]))
    if baseline is not None and baseline in t.index and t.loc[baseline, "cost_fe"] > 0:
        t.insert(5, "fe_vs_" + baseline, t["cost_fe"] / t.loc[baseline, "cost_fe"])
    t.index.name = "method"
    return t


def pareto_front(acc: Sequence[float], cost: Sequence[float]) -> list[bool]:
    """True for points no other point dominates (accuracy >= and cost <=, one strictly)."""
    acc, cost = list(acc), list(cost)
    out = []
    for i in range(len(acc)):
        dom = any(acc[j] >= acc[i] and cost[j] <= cost[i] and (acc[j] > acc[i] or cost[j] < cost[i])
                  for j in range(len(acc)) if j != i)
        out.append(not dom)
    return out


def stopping_table(df: pd.DataFrame, rules: Sequence[str] | None = None) -> pd.DataFrame:
    """Accuracy (points, 95 % CI) against mean cost (FE) and zoom iterations per
    configuration (stopping rule), with a Pareto-front flag (accuracy up, cost down)."""
    rows = []
    for v in _order(df["variant"], rules):
        if rules is not None and v not in rules:
            continue
        s = df[df["variant"] == v]
        a, lo, hi = _ci(s["score"])
        rows.append({"rule": v, "n": len(s), "accuracy": a, "acc_lo": lo, "acc_hi": hi,
                     "cost_fe": float(s["cost_fe"].mean()), "iterations": float(s["iterations"].mean()),
                     "state_used": float(s["best_index"].mean())})
    t = pd.DataFrame(rows, columns=["rule", "n", "accuracy", "acc_lo", "acc_hi", "cost_fe", "iterations",
                                    "state_used"])
    t["pareto"] = pareto_front(t["accuracy"].round(9), t["cost_fe"].round(9))
    return t


def reference_point(df: pd.DataFrame, variant: str = "base", label: str | None = None) -> dict:
    """{"label", "accuracy" (points), "cost_fe"} of one configuration, for ``plots.cost_accuracy``."""
    s = df[df["variant"] == variant]
    return {"label": label or variant, "accuracy": float(s["score"].mean() * 100), "cost_fe": float(s["cost_fe"].mean()),
            "n": int(len(s))}


# ----------------------------------------------------------------- stopping-rule configurations


def stopping_configs(max_iterations: int = 4, fixed: Sequence[int] = (0, 1, 2, 3, 4),
                     min_crop_area: float | None = None) -> dict[str, tuple[str, dict]]:
    """Label -> ("egg", options) for the stopping rules of METHOD.md s. 4 (the label
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


# ----------------------------------------------------------------- ablation configurations

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


def ablation_table(df: pd.DataFrame, axes: Mapping[str, Sequence], default: str = "default") -> pd.DataFrame:
    """One row per (axis, value): accuracy (points), delta vs the default with a paired
    95 % CI, mean IoU / pointing (points), mean cost (FE); ``paper`` marks the paper's choice."""
    rows = []
    for axis, vals in axes.items():
        for value, label in vals:
            s = df[df["variant"] == label]
            if len(s) == 0:
                continue
            d = paired_delta(df, default, label)
            rows.append({"axis": axis, "value": str(value), "label": label, "paper": label == default,
                         "n": len(s), "accuracy": float(s["score"].mean() * 100), "delta": d.mean,
                         "ci_lo": d.lo, "ci_hi": d.hi, "iou": float(s["iou"].mean() * 100),
                         "pointing": float(s["pointing"].mean() * 100), "cost_fe": float(s["cost_fe"].mean())})
    return pd.DataFrame(rows, columns=["axis", "value", "label", "paper", "n", "accuracy", "delta", "ci_lo",
                                       "ci_hi", "iou", "pointing", "cost_fe"])


# ----------------------------------------------------------------- multi-evidence

MULTI_FAMILIES = ["vstar", "doc", "info", "gqa"]


def multi_configs() -> dict[str, tuple[str, dict]]:
    return {"base": ("base", {}), "egg k=1": ("egg", {"k": 1}), "egg k=2": ("egg", {"k": 2})}


def evidence_kind(n_evidence: int) -> str:
    return "one box" if n_evidence <= 1 else "two boxes" if n_evidence == 2 else f"{n_evidence} boxes"


def multi_evidence_table(df: pd.DataFrame) -> pd.DataFrame:
    """By evidence count (one box / two boxes) and method: n, accuracy (points, 95 % CI),
    evidence recall (share of gt boxes whose centre lies in one of the method's boxes,
    points), IoU of the first box (points)."""
    sub = df.assign(evidence=[evidence_kind(k) for k in df["n_evidence"]])
    rows = []
    for e in _order(sub["evidence"], ["one box", "two boxes"]):
        for v in _order(sub["variant"]):
            s = sub[(sub["evidence"] == e) & (sub["variant"] == v)]
            if len(s) == 0:
                continue
            a, lo, hi = _ci(s["score"])
            rows.append({"evidence": e, "method": v, "n": len(s), "accuracy": a, "acc_lo": lo, "acc_hi": hi,
                         "evidence_recall": float(s["evidence_recall"].mean() * 100),
                         "iou": float(s["iou"].mean() * 100), "n_boxes": float(s["boxes"].map(len).mean())})
    return pd.DataFrame(rows, columns=["evidence", "method", "n", "accuracy", "acc_lo", "acc_hi",
                                       "evidence_recall", "iou", "n_boxes"])


# =========================================================================== verdicts

SUPPORTED, INCONCLUSIVE, NOT_SUPPORTED = "supported", "inconclusive", "not supported"


@dataclass
class Verdict:
    """A claim's status ("supported" / "inconclusive" / "not supported"), the sentence
    stating it with its numbers, and the numbers themselves."""

    claim: str
    status: str
    sentence: str
    numbers: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.sentence

    @property
    def supported(self) -> bool:
        return self.status == SUPPORTED


def _status(d: Delta) -> str:
    if d.n == 0 or not math.isfinite(d.mean):
        return INCONCLUSIVE
    if d.lo > 0:
        return SUPPORTED
    if d.mean > 0:
        return INCONCLUSIVE
    return NOT_SUPPORTED


def verdict_c1(df: pd.DataFrame, method: str = "egg", baseline: str = "base",
               detail: Sequence[str] | None = None, control: str | None = None,
               band: float = NEUTRAL_BAND) -> Verdict:
    """C1: ``method`` beats ``baseline`` on the detail-critical families (pooled paired
    delta; supported if its CI is above 0, inconclusive if positive but the CI includes 0,
    not supported if <= 0) and is about neutral on the control family (CI includes 0 or
    |delta| < ``band`` points; "includes" is strict: [-20, 0] does not). Supported only if both hold; not supported if the detail
    delta is <= 0 or the control effect is clearly non-neutral."""
    fams = _family_order(df)
    if detail is None:  # real benchmarks count by the family they stand for (docvqa -> doc)
        detail = [f for f in fams if family_of(f) in bench.DETAIL_FAMILIES]
    detail = [f for f in detail if f in fams]
    if control is None:
        control = next((f for f in fams if family_of(f) == bench.CONTROL_FAMILY), bench.CONTROL_FAMILY)
    d = paired_delta(df, baseline, method, families=detail) if detail else Delta(math.nan, math.nan, math.nan, 0)
    per = {f: paired_delta(df, baseline, method, families=[f]) for f in detail}
    c = paired_delta(df, baseline, method, families=[control]) if control in fams else None
    detail_status = _status(d)
    neutral = None
    if c is not None and c.n > 0:
        neutral = (c.lo < 0 < c.hi) or abs(c.mean) < band
    if detail_status == NOT_SUPPORTED or neutral is False:
        status = NOT_SUPPORTED
    elif detail_status == SUPPORTED and neutral:
        status = SUPPORTED
    else:
        status = INCONCLUSIVE
    per_txt = ", ".join(f"{f} {x.mean:+.1f}" for f, x in per.items() if x.n)
    n_pos = sum(1 for x in per.values() if x.n and x.mean > 0)
    n_sig = sum(1 for x in per.values() if x.significant_positive)
    s = (f"C1 {status}: {method} - {baseline} on the detail-critical families ({', '.join(detail)}) = "
         f"{d.fmt()} (n = {d.n}; positive on {n_pos} of {len(per)}, CI above 0 on {n_sig}; per family: {per_txt})")
    if c is None or c.n == 0:
        s += f"; control family {control!r} not run, so neutrality is untested."
    else:
        s += (f"; on the control ({control}) {c.fmt()} (n = {c.n}), "
              + ("about neutral" if neutral else "not neutral")
              + f" (neutral = CI strictly includes 0 or |delta| < {band:g} points).")
    return Verdict("C1", status, s, {"detail": asdict(d), "control": asdict(c) if c else None,
                                     "per_family": {f: asdict(x) for f, x in per.items()}})


def verdict_c2(df: pd.DataFrame, method: str = "egg", rivals: Sequence[str] | None = None) -> Verdict:
    """C2: ``method`` localises better than each ViCrop variant: paired delta of IoU (points,
    primary) per rival; supported if every IoU CI is above 0, not supported if any IoU delta
    is <= 0, else inconclusive. Pointing deltas are reported alongside."""
    present = set(df["variant"])
    rivals = [r for r in (rivals if rivals is not None else VICROP_METHODS) if r in present]
    if method not in present or not rivals:
        return Verdict("C2", INCONCLUSIVE, f"C2 {INCONCLUSIVE}: need {method!r} and at least one ViCrop variant.")
    ious = {r: paired_delta(df, r, method, value="iou") for r in rivals}
    points = {r: paired_delta(df, r, method, value="pointing") for r in rivals}
    sts = [_status(d) for d in ious.values()]
    status = (NOT_SUPPORTED if NOT_SUPPORTED in sts else SUPPORTED if all(x == SUPPORTED for x in sts)
              else INCONCLUSIVE)
    own = df[df["variant"] == method]
    parts = [f"vs {r}: IoU {ious[r].fmt()}, pointing {points[r].fmt()}" for r in rivals]
    s = (f"C2 {status}: {method} mean IoU {own['iou'].mean() * 100:.1f}, pointing "
         f"{own['pointing'].mean() * 100:.1f} (points, n = {own['iou'].notna().sum()}); "
         f"{method} - ViCrop " + "; ".join(parts) + ".")
    return Verdict("C2", status, s, {"iou": {r: asdict(d) for r, d in ious.items()},
                                     "pointing": {r: asdict(d) for r, d in points.items()}})


def verdict_c3(df: pd.DataFrame, rule: str = "spatial-entropy", rules: Sequence[str] | None = None) -> Verdict:
    """C3: the spatial-entropy rule has the best accuracy/cost balance. Supported if it is on
    the Pareto front (no rule is at least as accurate at no higher mean cost, one strictly)
    and no other rule is significantly more accurate (paired CI above 0); not supported if
    another rule dominates it; inconclusive otherwise (a costlier rule is significantly
    more accurate)."""
    t = stopping_table(df, rules)
    if rule not in set(t["rule"]):
        return Verdict("C3", INCONCLUSIVE, f"C3 {INCONCLUSIVE}: rule {rule!r} was not run.")
    me = t[t["rule"] == rule].iloc[0]
    others = t[t["rule"] != rule]
    dominators = [r.rule for r in others.itertuples()
                  if r.accuracy >= me.accuracy and r.cost_fe <= me.cost_fe
                  and (r.accuracy > me.accuracy or r.cost_fe < me.cost_fe)]
    better = {r: paired_delta(df, rule, r) for r in others["rule"]}
    sig_better = [r for r, d in better.items() if d.significant_positive]
    if dominators:
        status = NOT_SUPPORTED
    elif sig_better:
        status = INCONCLUSIVE
    else:
        status = SUPPORTED
    top = t.sort_values(["accuracy", "cost_fe"], ascending=[False, True]).iloc[0]
    s = (f"C3 {status}: {rule} reaches {me.accuracy:.1f} points at {me.cost_fe:.2f} FE per question "
         f"(n = {int(me.n)}, {me.iterations:.2f} zoom iterations on average); ")
    if dominators:
        dm = t[t["rule"].isin(dominators)].sort_values(["accuracy", "cost_fe"], ascending=[False, True]).iloc[0]
        s += (f"dominated by {dm.rule} ({dm.accuracy:.1f} points at {dm.cost_fe:.2f} FE; "
              f"{dm.rule} - {rule} = {better[dm.rule].fmt()})")
    elif round(top.accuracy, 9) <= round(me.accuracy, 9):
        ties = [r.rule for r in others.itertuples() if round(r.accuracy, 9) == round(me.accuracy, 9)]
        s += "the most accurate rule" + (f" (tied with {', '.join(ties)})" if ties else "") + ", on the Pareto front"
    else:
        s += (f"on the Pareto front; the most accurate is {top.rule} ({top.accuracy:.1f} points at "
              f"{top.cost_fe:.2f} FE; {top.rule} - {rule} = {better[top.rule].fmt()})")
    if sig_better and not dominators:
        s += f"; significantly more accurate: {', '.join(sig_better)}"
    s += "."
    return Verdict("C3", status, s, {"table": t.to_dict(orient="records"), "dominated_by": dominators,
                                     "significantly_better": sig_better})


def verdict_c4(table: pd.DataFrame, df: pd.DataFrame | None = None, axes: Sequence[str] = C4_AXES) -> Verdict:
    """C4: the paper's choices (first token, last layer = all layers, k = 2) have the best
    accuracy on their ablation axes (``ablation_table`` rows; ``paper`` marks the choice).
    Per axis: "best" if the paper's value is more accurate than every other value; "tied"
    if it is at least as accurate as all but equal to some; else the best other value is
    compared with the paired delta (``df`` needed; without it, differences count as
    significant). Supported if every axis is best; not supported if on some axis another
    value is significantly better (paired CI above 0); else inconclusive."""
    parts, states = [], {}
    for axis in axes:
        t = table[table["axis"] == axis]
        if t.empty or not t["paper"].any():
            parts.append(f"{axis}: not run")
            states[axis] = "missing"
            continue
        paper = t[t["paper"]].iloc[0]
        others = t[~t["paper"]]
        if others.empty:
            states[axis] = "missing"
            parts.append(f"{axis}: only the paper's value was run")
            continue
        best_other = others.sort_values("accuracy", ascending=False, kind="stable").iloc[0]
        acc_p = round(float(paper.accuracy), 9)
        acc_others = others["accuracy"].astype(float).round(9)
        if (acc_p > acc_others).all():
            states[axis] = "best"
            parts.append(f"{axis}: {paper.value} best ({paper.accuracy:.1f} vs next {best_other.value} "
                         f"{best_other.accuracy:.1f})")
        elif (acc_p >= acc_others).all():
            ties = [str(v) for v, a in zip(others["value"], acc_others) if a == acc_p]
            states[axis] = "tied"
            parts.append(f"{axis}: {paper.value} tied for best with {', '.join(ties)} ({paper.accuracy:.1f})")
        else:
            if df is not None:
                d = paired_delta(df, paper.label, best_other.label)
                sig = d.significant_positive
                txt = f"{best_other.value} - {paper.value} = {d.fmt()}"
            else:
                sig, txt = True, f"{best_other.value} {best_other.accuracy:.1f} vs {paper.value} {paper.accuracy:.1f}"
            states[axis] = "worse-significant" if sig else "worse"
            parts.append(f"{axis}: {best_other.value} beats the paper's {paper.value} ({txt}"
                         + (", significant)" if sig else ", CI includes 0)"))
    vals = list(states.values())
    if "worse-significant" in vals:
        status = NOT_SUPPORTED
    elif vals and all(v == "best" for v in vals):
        status = SUPPORTED
    else:
        status = INCONCLUSIVE
    s = f"C4 {status}: " + "; ".join(parts) + " (accuracy in points)."
    return Verdict("C4", status, s, {"axes": states})


def verdict_multi(df: pd.DataFrame, one: str = "egg k=1", two: str = "egg k=2") -> Verdict:
    """Multi-evidence: k = 2 beats k = 1 on two-box questions (paired delta; supported if
    its CI is above 0, inconclusive if positive, not supported if <= 0); the one-box delta
    is reported for contrast."""
    sub = df.assign(evidence=[evidence_kind(k) for k in df["n_evidence"]])
    d2 = paired_delta(sub[sub["evidence"] == "two boxes"], one, two)
    d1 = paired_delta(sub[sub["evidence"] == "one box"], one, two)
    status = _status(d2)
    s = (f"Multi-evidence {status}: {two} - {one} on two-box questions = {d2.fmt()} (n = {d2.n}), "
         f"on one-box questions = {d1.fmt()} (n = {d1.n}).")
    return Verdict("multi", status, s, {"two": asdict(d2), "one": asdict(d1)})


# =========================================================================== files and setup


def _fmt_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else f"{float(v):.2f}"
    return str(v).replace("|", "\\|")


def to_markdown(df: pd.DataFrame, index: bool = True) -> str:
    """A GitHub markdown table (no ``tabulate`` needed); floats with 2 decimals."""
    d = df.reset_index() if index and not isinstance(df.index, pd.RangeIndex) else df
    head = [str(c) for c in d.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in d.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, name: str, out_dir="results") -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.csv`` and ``<name>.md``; returns both paths."""
    d = resolve_dir(out_dir)
    keep_index = not isinstance(df.index, pd.RangeIndex)
    csv = d / f"{name}.csv"
    df.to_csv(csv, index=keep_index, float_format="%.6g", lineterminator="\n")
    md = d / f"{name}.md"
    md.write_text(to_markdown(df, index=keep_index), encoding="utf-8")
    return csv, md


def quiet() -> None:
    """Silence progress bars and library warnings (notebook outputs must be reproducible)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    silence_libraries()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    pd.set_option("display.precision", 2)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 50)


def load_vlm(model=None, device=None):
    """``egg.load_model`` with quiet output; a relative path that does not exist from the
    working directory is looked up relative to the repository root."""
    from .api import load_model

    quiet()
    if model is not None:
        p = Path(os.path.expanduser(str(model)))
        if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
            model = str(REPO_ROOT / p)
    return load_model(model, device=device)


def results_path(results_dir="results", name: str = "records.jsonl") -> Path:
    """The shared JSON-lines records file in ``results_dir`` (see module docstring)."""
    return resolve_dir(results_dir) / name


__all__ = [
    "METHODS", "MAIN_METHODS", "VICROP_METHODS", "Record", "Spec", "Verdict", "Delta", "run", "make_specs",
    "effective_options", "make_record", "record_key", "records_frame", "load_records", "save_records", "read_json_lines",
    "model_fingerprint", "code_fingerprint", "accuracy_table", "delta_table", "delta_summary", "localisation_table", "cost_table",
    "stopping_table", "reference_point", "ablation_table", "multi_evidence_table", "pareto_front", "paired_delta", "size_bucket",
    "bucket_legend", "stopping_configs", "ablation_configs", "layer_values", "multi_configs", "verdict_c1",
    "verdict_c2", "verdict_c3", "verdict_c4", "verdict_multi", "save_table", "to_markdown", "resolve_dir",
    "results_path", "load_vlm", "quiet", "SIZE_BUCKETS", "FE_FORWARD", "FE_BACKWARD", "NEUTRAL_BAND",
    "PAPER_CHOICES", "MULTI_FAMILIES", "REPO_ROOT",
]
