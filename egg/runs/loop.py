"""The run loop: methods over benchmark items, resumable from a records file."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from .. import synthetic as bench
from .records import Record, _append, code_fingerprint, load_records, make_record, model_fingerprint, record_key
from .registry import METHODS, NEEDS_BOXES, effective_options


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
        from .. import datasets as benchmarks

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
        from .. import datasets as benchmarks

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
    from .. import datasets as benchmarks

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
