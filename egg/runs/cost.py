"""What grounding costs: base answer vs EGG vs ViCrop, and what the embedding cache saves.

>>> from egg.runs import cost
>>> report = cost.run(vlm, items, iterations=3)   # items: egg.bench items
>>> report.counters()        # forward / backward passes, images encoded, tokens (deterministic)
>>> report.timings()         # seconds per question, x base, peak memory (vary run to run)
>>> print(report.format())

For each method, over the same questions, ``run`` measures the wall and CPU time per
question, forward / backward passes, images through the vision tower, generated tokens,
and the peak memory of the tensors one call allocates above what was allocated before
(``memory_probe``: exact, from the torch profiler's allocation events; on a GPU, also peak
CUDA memory). Ratios to the base answer are all from this one run.
Then the embedding cache: the same fixed-depth EGG run with visual embeddings cached
across iterations (this package's default) and recomputed at every iteration for every
image (as the authors' release does); the results are identical (checked on every
question), the time ratio is the speed-up. ``repeats > 1`` adds timing rounds that
interleave the methods (steadier ratios on a busy machine).

``python -m egg cost`` is the command-line front end; ``notebooks/08_cost.ipynb`` shows it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

def memory_probe(fn: Callable[[], object]) -> tuple[float, float]:
    """(tensor MB, CUDA MB) at the peak of one call of ``fn``: the tensors torch allocates
    above what was allocated before (``egg.runs.perf.tensor_peak_mb``; exact, unlike the
    process's resident size, which reads near zero once the C allocator keeps freed blocks),
    and on a GPU the peak CUDA memory allocated (NaN on the CPU)."""
    import torch

    from .perf import tensor_peak_mb

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    tensors = tensor_peak_mb(fn)
    return tensors, (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan"))


MethodFn = Callable[[object, object], tuple]


def configs(iterations: int = 3) -> dict[str, tuple[str, dict]]:
    """label -> (method of the registry ``egg.runs.registry.METHODS``, options): the base
    answer, EGG (one step, the paper's rule, fixed depth) and the three ViCrop variants."""
    return {
        "base": ("base", {}),
        "egg-1-step": ("egg", {"stopping": "fixed", "fixed_n": 1}),
        "egg-full": ("egg", {}),  # the paper's rule: spatial entropy, cap 4
        f"egg-fixed-{iterations}": ("egg", {"stopping": "fixed", "fixed_n": iterations}),
        "vicrop-rel-att": ("vicrop-rel-att", {}),
        "vicrop-grad-att": ("vicrop-grad-att", {}),
        "vicrop-pure-grad": ("vicrop-pure-grad", {}),
    }


def methods(iterations: int = 3) -> dict[str, MethodFn]:
    """label -> fn(vlm, item) -> (answer, Cost, boxes), each calling the registry's method."""
    from .registry import METHODS

    def call(name: str, options: dict) -> MethodFn:
        def fn(vlm, item):
            g = METHODS[name](vlm, item, **options)
            return g.answer, g.cost, g.boxes

        return fn

    return {label: call(name, opts) for label, (name, opts) in configs(iterations).items()}


def _timed(fn: MethodFn, vlm, item) -> tuple[float, float, tuple]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(vlm, item)
    return time.perf_counter() - w0, time.process_time() - c0, out


def measure(vlm, items: Sequence, fns: dict[str, MethodFn], repeats: int = 1, warmup: bool = True) -> dict:
    """Time and count every method of ``fns`` on every item.

    Round 1 runs the methods one after another (each after a warm-up call on the first
    item and a memory probe of one more, untimed, ``memory_probe``), and records the
    counters and the outputs.
    Rounds 2..``repeats`` interleave the methods item by item, so that a slow spell of
    the machine (other processes) falls on all of them alike. Per method: wall and CPU
    seconds per question = mean over items of the median over rounds (CPU time, of this
    process over all its threads, is the steadier measure on a shared machine); counters
    = mean per question; ``outputs`` = round 1's (answer, boxes) per item.
    """
    items = list(items)
    if not items:
        raise ValueError("measure needs at least one item")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    wall = {k: [[] for _ in items] for k in fns}
    cpu = {k: [[] for _ in items] for k in fns}
    counts: dict[str, list] = {k: [] for k in fns}
    outputs: dict[str, list] = {k: [] for k in fns}
    mem: dict[str, tuple[float, float]] = {}
    for name, fn in fns.items():
        if warmup:
            fn(vlm, items[0])  # lazy inits, allocator
        mem[name] = memory_probe(lambda: fn(vlm, items[0]))
        for i, it in enumerate(items):
            w, c, (ans, cost, boxes) = _timed(fn, vlm, it)
            wall[name][i].append(w)
            cpu[name][i].append(c)
            counts[name].append(cost)
            outputs[name].append((ans, [tuple(b) for b in boxes]))
    for _ in range(repeats - 1):
        for i, it in enumerate(items):
            for name, fn in fns.items():
                w, c, _out = _timed(fn, vlm, it)
                wall[name][i].append(w)
                cpu[name][i].append(c)
    rows = {}
    for name in fns:
        per_q = [float(np.median(x)) for x in wall[name]]
        cs = counts[name]
        rows[name] = {
            "sec_per_q": float(np.mean(per_q)),
            "cpu_sec_per_q": float(np.mean([np.median(x) for x in cpu[name]])),
            "sec_p90": float(np.percentile(per_q, 90)),
            "forward": float(np.mean([c.forward for c in cs])),
            "backward": float(np.mean([c.backward for c in cs])),
            "images_encoded": float(np.mean([c.images_encoded for c in cs])),
            "generated_tokens": float(np.mean([c.generated_tokens for c in cs])),
            "peak_tensor_mb": float(mem[name][0]),
            "peak_cuda_mb": float(mem[name][1]),
            "outputs": outputs[name],
        }
    return rows


COUNTERS = ["forward", "backward", "images_encoded", "generated_tokens"]
TIMINGS = ["sec_per_q", "x_base", "cpu_sec_per_q", "cpu_x_base", "peak_tensor_mb", "peak_cuda_mb"]


@dataclass
class CostReport:
    """The numbers of one ``run``: per-method rows, and the cache comparison."""

    rows: dict[str, dict]
    cache: dict
    model: dict = field(default_factory=dict)
    n_questions: int = 0
    iterations: int = 3
    threads: int = 0
    repeats: int = 1

    @property
    def base_seconds(self) -> float:
        return self.rows["base"]["sec_per_q"]

    def ratio(self, method: str, key: str = "sec_per_q") -> float:
        """``method``'s ``key`` over the base answer's (e.g. time x base)."""
        b = self.rows["base"][key]
        return float(self.rows[method][key] / b) if b else float("nan")

    def counters(self):
        """Deterministic work per question (pandas DataFrame, one row per method)."""
        import pandas as pd

        df = pd.DataFrame.from_dict(self.rows, orient="index")[COUNTERS]
        df.index.name = "method"
        return df

    def timings(self):
        """Wall and CPU seconds per question, relative to the base answer, and memory
        (these vary by run and machine)."""
        import pandas as pd

        df = pd.DataFrame.from_dict(self.rows, orient="index")
        df["x_base"] = df["sec_per_q"] / self.base_seconds
        df["cpu_x_base"] = df["cpu_sec_per_q"] / self.rows["base"]["cpu_sec_per_q"]
        df = df[TIMINGS].astype(float)
        df.index.name = "method"
        return df

    def cache_table(self):
        """Cached vs recomputed visual embeddings for the fixed-depth EGG run."""
        import pandas as pd

        cols = ["sec_per_q", "cpu_sec_per_q", "forward", "backward", "images_encoded", "peak_tensor_mb"]
        df = pd.DataFrame({k: {c: self.cache[k][c] for c in cols} for k in ("recomputed", "cached")}).T
        df.index.name = f"egg-fixed-{self.iterations} embeddings"
        return df.astype(float)

    @property
    def speedup(self) -> float:
        return float(self.cache["speedup"])

    @property
    def fewer_encodings(self) -> float:
        return float(self.cache["fewer_encodings"])

    def to_dict(self) -> dict:
        """JSON-able numbers (the per-item outputs dropped)."""
        def strip(r):
            return {k: v for k, v in r.items() if k != "outputs"}

        cache = {k: (strip(v) if isinstance(v, dict) else v) for k, v in self.cache.items()}
        return {"model": self.model, "n_questions": self.n_questions, "iterations": self.iterations,
                "threads": self.threads, "repeats": self.repeats,
                "methods": {k: strip(v) for k, v in self.rows.items()}, "cache": cache}

    def format(self) -> str:
        """The plain-text table ``python -m egg cost`` prints."""
        hdr = (f"{'method':<18}{'s/q':>9}{'x base':>8}{'cpu s/q':>9}{'x base':>8}{'fwd':>6}{'bwd':>6}{'enc':>6}"
               f"{'tok':>6}{'peak MB':>9}")
        lines = [hdr, "-" * len(hdr)]
        for name, r in self.rows.items():
            lines.append(f"{name:<18}{r['sec_per_q']:>9.3f}{self.ratio(name):>8.2f}{r['cpu_sec_per_q']:>9.3f}"
                         f"{self.ratio(name, 'cpu_sec_per_q'):>8.2f}{r['forward']:>6.1f}"
                         f"{r['backward']:>6.1f}{r['images_encoded']:>6.1f}{r['generated_tokens']:>6.1f}"
                         f"{r['peak_tensor_mb']:>9.1f}")
        c = self.cache
        lines += [
            "",
            f"embedding cache, EGG fixed {self.iterations} iterations:",
            f"  recomputed each iteration: {c['recomputed']['sec_per_q']:.3f} s/q, "
            f"{c['recomputed']['images_encoded']:.1f} images encoded",
            f"  cached across iterations:  {c['cached']['sec_per_q']:.3f} s/q, "
            f"{c['cached']['images_encoded']:.1f} images encoded",
            f"  speed-up x{self.speedup:.2f} (CPU time x{c['cpu_speedup']:.2f}); "
            f"encodings x{self.fewer_encodings:.2f} fewer; same boxes and answers: {c['same_boxes']}",
        ]
        return "\n".join(lines)


def run(vlm, items: Sequence, iterations: int = 3, names: Sequence[str] | None = None, repeats: int = 1,
        log: Callable[[str], None] | None = None) -> CostReport:
    """Measure every method of ``methods(iterations)`` (or those in ``names``; "base" is
    always included) and the embedding cache (EGG with ``iterations`` fixed zoom
    iterations, visual embeddings cached vs recomputed at every iteration) on ``items``,
    all in one ``measure`` (``repeats`` rounds). The cached and recomputed runs must give
    the same boxes and answers (``cache["same_boxes"]``). ``log``: called with a line at
    the end."""
    import torch

    from ..adapters import as_adapter
    from ..api import ground

    items = list(items)
    all_methods = methods(iterations)
    if names is not None:
        unknown = [n for n in names if n not in all_methods]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; valid: {list(all_methods)}")
        chosen = ["base"] + [n for n in names if n != "base"]
    else:
        chosen = list(all_methods)
    kw = dict(stopping="fixed", fixed_n=iterations)

    def egg_run(cache_visual: bool) -> MethodFn:
        def fn(v, it):
            r = ground(v, it.image, it.question, cache_visual=cache_visual, **kw)
            return r.answer, r.cost, r.boxes

        return fn

    fns = {name: all_methods[name] for name in chosen}
    fns["cache:cached"] = egg_run(True)
    fns["cache:recomputed"] = egg_run(False)
    measured = measure(vlm, items, fns, repeats=repeats)
    cached, fresh = measured.pop("cache:cached"), measured.pop("cache:recomputed")
    same = cached["outputs"] == fresh["outputs"]
    cache = {"cached": cached, "recomputed": fresh,
             "speedup": fresh["sec_per_q"] / cached["sec_per_q"],
             "cpu_speedup": fresh["cpu_sec_per_q"] / cached["cpu_sec_per_q"],
             "fewer_encodings": fresh["images_encoded"] / max(cached["images_encoded"], 1e-9),
             "same_boxes": bool(same)}
    if log:
        log(f"measured {len(fns)} runs x {len(items)} questions x {repeats} round(s)")
    return CostReport(rows=measured, cache=cache, model=as_adapter(vlm).describe(), n_questions=len(items),
                      iterations=int(iterations), threads=torch.get_num_threads(), repeats=int(repeats))


def reference_or_random(model=None, device=None, dtype=None):
    """``egg.load_model(model)``; when ``model`` is None and the reference model is not
    trained yet, a random-init reference model (same architecture), so that cost can be
    measured anyway: the time of a pass does not depend on the weights (how many zoom
    iterations the spatial-entropy rule runs, and how many tokens are generated, do)."""
    from ..api import REFERENCE_DIR, load_model

    if model is None and not REFERENCE_DIR.is_dir():
        from ..adapters import VLM
        from ..reference.build import ReferenceConfig, build_model, build_processor

        cfg = ReferenceConfig()
        proc = build_processor(cfg)
        return VLM.from_model(build_model(cfg, proc.tokenizer, seed=0), proc, source="random-init reference")
    return load_model(model, device=device, dtype=dtype)


__all__ = ["run", "measure", "methods", "CostReport", "memory_probe", "reference_or_random", "COUNTERS", "TIMINGS"]
