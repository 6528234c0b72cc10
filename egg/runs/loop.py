"""The run loop: methods over benchmark items, resumable from a records file."""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Mapping, Sequence

import pandas as pd

from .. import synthetic as bench
from ..outputs import progress_line
from .records import Record, code_fingerprint, make_record, model_fingerprint, record_key
from .store import maybe_store, read_lines, split_outcomes
from .registry import BATCHED, METHODS, NEEDS_BOXES, effective_options


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


#: Prefixes that say which kind a name means: "vstar", "pope" and "gqa" are both a
#: procedural family and a real benchmark.
PROCEDURAL, REAL = "synthetic:", "real:"


class ItemSource:
    """Items of a procedural family or of a real benchmark (``egg.benchmarks``), by index,
    scored with that family's or benchmark's own metric.

    A name that is both (``vstar``, ``pope``, ``gqa``) means the kind ``prefer`` says
    (notebooks: the procedural family; ``python -m egg run``: the real benchmark);
    ``synthetic:<family>`` and ``real:<benchmark>`` choose explicitly."""

    def __init__(self, name: str, split: str | None = None, seed: int = 0, data=None, prefer: str = "procedural",
                 geometry="v1"):
        if prefer not in ("procedural", "real"):
            raise ValueError(f"prefer must be 'procedural' or 'real', got {prefer!r}")
        from .. import datasets as benchmarks

        want = None
        for prefix, kind in ((PROCEDURAL, "procedural"), (REAL, "real")):
            if name.startswith(prefix):
                name, want = name[len(prefix):], kind
        if want is None:
            both = name in bench.FAMILIES and name in benchmarks.names()
            want = prefer if both else ("procedural" if name in bench.FAMILIES else "real")
        self.name = name
        self.seed = int(seed)
        if want == "procedural":
            if name not in bench.FAMILIES:
                raise ValueError(f"unknown procedural family {name!r}; expected one of {bench.families()}")
            self.kind, self.family, self.size = "procedural", name, None
            self.geometry = bench.geometry(geometry)
            self.split = split or "test"
            return
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
            return bench.item(self.family, self.split, i, self.seed, self.geometry)
        try:
            it = self.data[i]
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for unreadable image bytes
            raise ValueError(f"{self.name} item {i}: could not be read ({type(e).__name__}: {e})") from e
        it.meta.update(split=self.split, index=int(i), seed=self.seed)
        return it

    def item_id(self, i: int) -> str:
        """The item's id (real benchmarks: the dataset's; procedural: the index)."""
        return str(i) if self.kind == "procedural" else self.data.item_id(i)

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


@dataclass
class Job:
    """One (item, method configuration) of a run, with its resume key."""

    source: ItemSource
    index: int
    spec: Spec
    key: str


@dataclass
class Outcome:
    """What a run produced: the records in job order, and the failures (this run's and
    earlier ones that were not retried)."""

    records: list
    failures: list

    @property
    def n_failed(self) -> int:
        return len(self.failures)


def jobs_for(sources, counts_or_indices, specs: Sequence[Spec], model: str) -> list[Job]:
    """Every (source, item, spec) in order, keyed by ``record_key`` with ``model`` (model and
    code fingerprints): the one resume key of every run."""
    out = []
    for src, idx in zip(sources, counts_or_indices):
        for i in (range(idx) if isinstance(idx, int) else idx):
            for s in specs:
                out.append(Job(src, int(i), s, record_key(model, src.name, src.split, src.seed, int(i), s.method,
                                                             s.params)))
    return out


def _failure(job: Job, model: str, error: BaseException, extra: Mapping) -> dict:
    return {"key": job.key, "failed": True, "error": f"{type(error).__name__}: {error}", "family": job.source.name,
            "split": job.source.split, "seed": job.source.seed, "index": job.index, "method": job.spec.method,
            "params": job.spec.params, "variant": job.spec.label, "model": model, **extra}


def execute(vlm, jobs: Sequence[Job], model: str, store=None, done: Mapping | None = None,
            failed: Mapping | None = None, retry_failed: bool = False, progress: bool = True,
            desc: str = "egg.run", extra=None, batch_size: int = 1) -> Outcome:
    """The run loop: compute each job not in ``done`` and append it to ``store``.

    done / failed: {key: line} already in the store. A job whose earlier attempt failed is
    kept as failed unless ``retry_failed``. An item whose method raises is recorded as a
    failure (its error and item id) and the run goes on; KeyboardInterrupt stops it.
    extra: a function (job, item or None when the item could not be loaded) -> dict of
        fields added to each written line.
    progress: a progress bar on stderr (notebooks pass False: a kernel captures stderr
        into the notebook's outputs, which nbval compares).
    batch_size: methods with a batched form (``registry.BATCHED``: egg, ViCrop) run this many
        items of one configuration per call (``egg.ground_batch``); the records are the
        single calls' and come back in job order. A batch that raises is run again item by
        item, so that each failure names its own item.
    """
    import sys

    from tqdm import tqdm  # the plain bar: tqdm.auto would draw a widget into a notebook

    done, failed = dict(done or {}), dict(failed or {})
    b = int(batch_size)
    if b < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    waiting: dict[str, list[int]] = {}  # spec label -> positions of jobs waiting for a batch
    with tqdm(total=len(jobs), disable=not progress, desc=desc, file=sys.stderr) as bar:
        loop = _Loop(vlm, jobs, model, store, done, failed, extra, bar, items=_ItemCache(max(2, b + 1)), desc=desc)
        for pos, job in enumerate(jobs):
            if job.key in done:
                loop.finish(pos, replace(Record.from_dict(done[job.key]), variant=job.spec.label))
            elif job.key in failed and not retry_failed:
                loop.finish(pos, failed[job.key])
            elif b > 1 and job.spec.method in BATCHED:
                group = waiting.setdefault(job.spec.label, [])
                group.append(pos)
                if len(group) == b:
                    loop.compute(waiting.pop(job.spec.label))
            else:
                loop.compute([pos])
        for label in list(waiting):
            loop.compute(waiting.pop(label))
    if loop.skipped:
        warnings.warn("skipped (no ground-truth boxes): " + ", ".join(sorted(loop.skipped)), stacklevel=3)
    ordered = [loop.results[i] for i in range(len(jobs)) if loop.results.get(i) is not None]
    return Outcome([r for r in ordered if isinstance(r, Record)], [r for r in ordered if isinstance(r, dict)])


@dataclass
class _Loop:
    """``execute``'s state: what each job position produced (a Record, a failure line, or
    None when skipped), and how to compute a group of jobs of one configuration."""

    vlm: object
    jobs: Sequence[Job]
    model: str
    store: object
    done: dict
    failed: dict
    extra: object
    bar: object
    items: "_ItemCache"
    results: dict = field(default_factory=dict)
    skipped: set = field(default_factory=set)
    desc: str = "egg.run"
    finished: int = 0

    def finish(self, pos: int, out) -> None:
        self.results[pos] = out
        self.bar.update(1)
        self.finished += 1
        total = len(self.jobs)
        if self.finished == total or self.finished % max(1, total // 10) == 0:
            progress_line(f"{self.desc}: {self.finished}/{total} results")

    def compute(self, positions: list[int]) -> None:
        """Jobs of one configuration: in one batched call when there are several (and it
        succeeds), else one at a time."""
        ready = []  # (position, item, extra fields)
        for pos in positions:
            job = self.jobs[pos]
            fields_ = self.extra(job, None) if self.extra else {}
            try:
                item = self.items.get(job)
                fields_ = self.extra(job, item) if self.extra else {}
            except Exception as e:  # noqa: BLE001 - an unreadable item is that item's failure
                self.finish(pos, _failed(job, self.model, e, fields_, self.store, self.failed))
                continue
            if job.spec.method in NEEDS_BOXES and not item.boxes:
                self.skipped.add(f"{job.spec.label} on {job.source.name}")
                self.finish(pos, None)
                continue
            ready.append((pos, item, fields_))
        if len(ready) > 1:
            spec = self.jobs[ready[0][0]].spec
            try:
                gs = BATCHED[spec.method](self.vlm, [r[1] for r in ready], **spec.params)
            except Exception:  # noqa: BLE001 - find the item that fails, one at a time
                gs = None
            if gs is not None:
                for (pos, item, fields_), g in zip(ready, gs):
                    self.finish(pos, _written(self.jobs[pos], g, item, self.model, fields_, self.store, self.done))
                return
        for pos, item, fields_ in ready:
            job = self.jobs[pos]
            try:
                g = METHODS[job.spec.method](self.vlm, item, **job.spec.params)
                self.finish(pos, _written(job, g, item, self.model, fields_, self.store, self.done))
            except Exception as e:  # noqa: BLE001 - one bad item must not stop a run
                self.finish(pos, _failed(job, self.model, e, fields_, self.store, self.failed))


class _ItemCache:
    """The last few items loaded (a run asks for each item once per configuration)."""

    def __init__(self, size: int):
        self.size, self.items = size, {}

    def get(self, job: Job):
        k = (job.source.name, job.index)
        if k not in self.items:
            if len(self.items) >= self.size:
                self.items.pop(next(iter(self.items)))
            self.items[k] = job.source.item(job.index)
        return self.items[k]


def _written(job: Job, g, item, model: str, fields_: Mapping, store, done: dict) -> Record:
    rec = job.source.record(g, item, index=job.index, method=job.spec.method, params=job.spec.params,
                            variant=job.spec.label, model=model)
    if store is not None:
        store.append({**rec.to_dict(), **fields_})
    done[job.key] = rec.to_dict()
    return rec


def _failed(job: Job, model: str, error: BaseException, fields_: Mapping, store, failed: dict) -> dict:
    line = _failure(job, model, error, fields_)
    if store is not None:
        store.append(line)
    failed[job.key] = line
    return line


def run(vlm, methods, families=None, n: int = 20, split: str = "test", seed: int = 0,
        method_options: Mapping | None = None, path=None, progress: bool = True,
        data: Mapping | None = None, retry_failed: bool = False, batch_size: int = 8) -> pd.DataFrame:
    """Run ``methods`` on items 0..n-1 of each family; one row per (item, configuration).

    families: procedural family names (None: all, ``bench.families()``) and/or real
        benchmarks (``egg.datasets.names()``, e.g. "textvqa", "pope-adversarial"), which
        are scored with their official metrics; n is capped at a benchmark's size.
    data: {benchmark: local copy of its dataset} for real benchmarks (else the Hub cache).
    methods / method_options: see ``make_specs``.
    path: JSON-lines file (``egg.runs.store``), locked while the run writes it. Records
        already there with the same key (model and code fingerprints, family, split, seed,
        index, method, effective options) are reused, so an interrupted run resumes and
        notebooks sharing a file share work. Items that raise are recorded as failures and
        left out of the table (a warning counts them); ``retry_failed`` runs them again.
    progress: a progress bar on stderr.
    batch_size: items per batched call of methods that have one (egg, ViCrop; see ``execute``): the
        same records as single calls, faster (the notebooks use the default, 8).
    Returns a DataFrame (``records_frame``) in a fixed order: family, item, configuration;
    ``df.attrs["failures"]`` holds the failure lines.
    """
    specs = make_specs(methods, method_options)
    fams = list(bench.families() if families is None else ([families] if isinstance(families, str) else families))
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    geo = bench.geometry_for(vlm)  # items sized for the model's grid; its fingerprint keys the records
    sources = [ItemSource(f, split, seed, (data or {}).get(f), geometry=geo) for f in fams]  # bare "pope": the family
    counts = [int(n) if s.size is None else min(int(n), s.size) for s in sources]
    fp = f"{model_fingerprint(vlm)}:{code_fingerprint()}"
    done, failed = split_outcomes(read_lines(path)[0]) if path is not None else ({}, {})
    with maybe_store(path) as store:
        out = execute(vlm, jobs_for(sources, counts, specs, fp), fp, store, done, failed,
                      retry_failed=retry_failed, progress=progress, batch_size=batch_size,
                      desc=f"{len(specs)} configuration(s) x {len(fams)} famil{'y' if len(fams) == 1 else 'ies'}")
    if out.failures:
        first = out.failures[0]
        warnings.warn(f"{out.n_failed} item(s) failed and are left out (first: {first['family']} item "
                      f"{first['index']}, {first['method']}: {first['error']})", stacklevel=2)
    df = records_frame(out.records)
    df.attrs["failures"] = out.failures
    return df


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
