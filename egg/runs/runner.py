"""Batch runs: one method over one benchmark, resumable, shardable, as JSON lines.

>>> from egg.runs import runner
>>> df = runner.run("data/reference", "text", method="egg", n=50, out="results/text-egg.jsonl")
>>> df = runner.run("llava-hf/llava-1.5-7b-hf", "docvqa", method="egg", out="results/docvqa.jsonl",
...                 resume=True)                                # real benchmark (egg.benchmarks)

Command line (same arguments)::

    python -m egg run --model PATH_OR_ID --benchmark docvqa --method egg --out results/docvqa.jsonl --resume
    accelerate launch --multi_gpu --num_processes 8 -m egg run ... --out results/docvqa.jsonl   # 8 shards
    torchrun --standalone --nproc_per_node 8 -m egg run ... --out results/docvqa.jsonl         # the same
    python -m egg merge results/docvqa.rank*-of-8.jsonl --out results/docvqa.jsonl

The loop is ``egg.runs.loop.execute``, the one the notebooks use, writing through
``egg.runs.store``: each finished item is one ``Record`` JSON line (plus "benchmark" and
"item_id"), appended, flushed and fsync'd before the next item starts, so a run killed at
any moment (even SIGKILL) loses at most the item in flight; a lock keeps a second writer
out. An item whose method raises is written as a failure line (its error and item id) and
the run goes on; the summary and the exit status say how many failed. ``resume=True``
keeps the records already in ``out`` (matched on the record key: model and code
fingerprints, benchmark, split, seed, item index, method, effective options), drops a torn
last line, and runs only what is missing; failed items are retried only with
``retry_failed``. A file that holds another configuration (model, code, method, options,
benchmark, split or seed) is refused with the difference named, never pooled. Without
``resume`` an existing ``out`` is an error.

Sharding: with world_size > 1 (arguments, or the RANK / WORLD_SIZE environment set by
``accelerate launch --multi_gpu`` and ``torchrun``) process ``rank`` takes items i with
i % world_size == rank and writes ``<out stem>.rank<r>-of-<w>.jsonl``; each process uses
``cuda:<LOCAL_RANK>`` when a GPU is present. ``merge`` joins shards into the table a
single-process run writes (same records, same order). ``accelerate launch --multi_gpu
--num_processes N`` shards on a CPU-only machine too (tested with 2 processes); ``--cpu
--num_processes N`` would start a single process on a machine without MPI.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from .. import synthetic as bench
from .loop import ItemSource, Spec, execute, jobs_for, records_frame
from .records import Record, code_fingerprint, model_fingerprint
from .registry import METHODS, effective_options
from .store import maybe_store, split_outcomes
from .store import read_lines as store_read

METHOD_NAMES = list(METHODS)


# --------------------------------------------------------------------------- files


def read_lines(path) -> list[dict]:
    """The lines of a records file that carry a key (records and failures); blank, torn,
    corrupt and non-UTF-8 lines are skipped, with a warning that counts them."""
    return [d for d in store_read(path)[0] if "key" in d]


CONFIG_FIELDS = ("model", "family", "split", "seed", "method", "params")


def config_of(line: Mapping) -> dict:
    """The configuration a record or failure line belongs to (everything in its key but the item)."""
    return {k: line.get(k) for k in CONFIG_FIELDS}


def check_one_config(lines: Sequence[Mapping], want: Mapping, path) -> None:
    """Refuse a file that holds records of another configuration, naming the difference."""
    for d in lines:
        have = config_of(d)
        diff = [f"{k}: file {have[k]!r}, this run {want[k]!r}" for k in CONFIG_FIELDS if have[k] != want[k]]
        if diff:
            raise ValueError(f"{path} holds records of another configuration ({'; '.join(diff)}); "
                             "write this run to another --out (a file holds one configuration, so that its "
                             "summary never pools two)")


def shard_path(out, rank: int, world_size: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.rank{rank}-of-{world_size}{out.suffix or '.jsonl'}")


def _dist_env() -> tuple[int, int, int]:
    def geti(*names, default=0):
        for n in names:
            v = os.environ.get(n)
            if v not in (None, ""):
                return int(v)
        return default

    return (geti("RANK", "ACCELERATE_PROCESS_INDEX"), geti("WORLD_SIZE", "ACCELERATE_NUM_PROCESSES", default=1),
            geti("LOCAL_RANK", "ACCELERATE_LOCAL_PROCESS_INDEX"))


# --------------------------------------------------------------------------- run


def run(model, benchmark: str, method: str = "egg", n: int | None = None, out=None, resume: bool = False,
        split: str | None = None, seed: int = 0, options: Mapping | None = None, data=None,
        rank: int | None = None, world_size: int | None = None, device: str | None = None,
        progress: bool = True, start: int = 0, retry_failed: bool = False, batch_size: int = 1) -> pd.DataFrame:
    """Run ``method`` on items start .. start+n-1 of ``benchmark``; returns the records
    (``egg.experiments.records_frame``) of this process's items, in index order.

    model: a loaded VLM, or a path / Hub id for ``egg.load_model`` (None: the reference).
    benchmark: a real benchmark (``egg.datasets.names()``: "textvqa", "vstar", "pope", ...)
        or a procedural family ("text", "doc", ...); "vstar", "pope" and "gqa" name both
        and mean the real benchmark here -- "synthetic:pope" is the procedural family.
    method: one of METHOD_NAMES; options: its keyword options (e.g. {"k": 1}).
    n: number of items (None: 300 for a family, the whole split for a real benchmark).
    out: JSON-lines file (per-process shard file when world_size > 1); None: keep in memory.
    resume: reuse finished records in ``out`` (otherwise an existing non-empty file is an error).
    split/seed: procedural split ("train" / "val" / "test") and seed; real benchmarks have one split.
    data: local copy of a real benchmark's dataset (see ``egg.benchmarks.load``).
    rank/world_size: sharding (None: from RANK / WORLD_SIZE, default 0 / 1).
    retry_failed: run again the items a previous run recorded as failed.
    batch_size: questions per batched call for methods that have one (``egg.ground_batch``, ``egg.vicrop_batch``;
        the records are the single calls').
    Returns the records of this process's items in index order; ``df.attrs["failures"]``
    holds the failure lines (items whose method raised).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {METHOD_NAMES}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    params = effective_options(method, options)
    env_rank, env_world, local_rank = _dist_env()
    rank = env_rank if rank is None else int(rank)
    world_size = env_world if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")

    src = ItemSource(benchmark, split, seed, data, prefer="real")
    if n is None:
        n = 300 if src.size is None else src.size - start
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    stop = int(start) + int(n)
    if src.size is not None and stop > src.size:
        raise ValueError(f"benchmark {benchmark!r} has {src.size} items; asked for items {start}..{stop - 1}")
    indices = [i for i in range(int(start), stop) if i % world_size == rank]

    vlm = _load(model, device, local_rank)
    if src.kind == "procedural":
        src.geometry = bench.geometry_for(vlm)  # items sized for the model's grid
    if method == "oracle" and src.kind == "real" and not _has_boxes(src, indices):
        raise ValueError(f"method 'oracle' needs ground-truth boxes; benchmark {benchmark!r} has none "
                         "(use 'textvqa-boxes' or 'vstar' with its annotation files)")
    fp = f"{model_fingerprint(vlm)}:{code_fingerprint()}"
    spec = Spec(method, method, params)
    path = None if out is None else shard_path(out, rank, world_size) if world_size > 1 else Path(out)
    desc = f"{benchmark}/{method}" + (f" [{rank}/{world_size}]" if world_size > 1 else "")

    def extra(job, item) -> dict:
        item_id = src.item_id(job.index) if item is None else str(item.meta.get("id", job.index))
        return {"benchmark": src.name, "item_id": item_id}

    # the existence check and the resume read happen under the lock, so that two processes
    # started together cannot both find the file new
    with maybe_store(path, must_be_new=not resume) as store:
        lines = read_lines(path) if path is not None else []
        check_one_config(lines, {"model": fp, "family": src.name, "split": src.split, "seed": src.seed,
                                 "method": method, "params": params}, path)
        done, failed = split_outcomes(lines)
        outcome = execute(vlm, jobs_for([src], [indices], [spec], fp), fp, store, done, failed,
                          retry_failed=retry_failed, progress=progress, desc=desc, extra=extra,
                          batch_size=batch_size)
    df = records_frame(outcome.records)
    df.attrs["failures"] = outcome.failures
    return df


def _load(model, device, local_rank: int):
    """The VLM to run: ``model`` itself, or loaded from a path or hub id (on this process's GPU)."""
    if not (isinstance(model, (str, os.PathLike)) or model is None):
        return model
    import torch

    from .files import load_vlm

    if device is None and torch.cuda.is_available():
        device = f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
    return load_vlm(model, device=device)


def _has_boxes(src: ItemSource, indices: Sequence[int]) -> bool:
    return bool(indices) and bool(src.item(indices[0]).boxes)


# --------------------------------------------------------------------------- merge


def merge(shards: Sequence, out=None) -> pd.DataFrame:
    """Join shard files (or any records files) into one table: records deduplicated on
    their key, sorted by (benchmark, method, index) -- the order a single-process run
    writes. With ``out`` the merged records are written there (atomically)."""
    import json

    lines: list[dict] = []
    for s in shards:
        if not Path(s).is_file():
            raise FileNotFoundError(f"shard file not found: {str(s)!r}")
        lines += read_lines(s)
    done, failed = split_outcomes(lines)
    rows = sorted([*done.values(), *failed.values()], key=lambda d: (d.get("family", ""), d.get("method", ""),
                                                json.dumps(d.get("params", {}), sort_keys=True),
                                                d.get("model", ""), int(d.get("index", 0))))
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for d in rows:
                f.write(json.dumps(d, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    df = records_frame([Record.from_dict(d) for d in rows if not d.get("failed")])
    df.attrs["failures"] = [d for d in rows if d.get("failed")]
    return df


def load(path) -> pd.DataFrame:
    """A records file (a run's output or a merge) as a DataFrame of its records (one per
    key); ``df.attrs["failures"]`` holds its failure lines."""
    done, failed = split_outcomes(read_lines(path))
    df = records_frame([Record.from_dict(d) for d in done.values()])
    df.attrs["failures"] = list(failed.values())
    return df


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (benchmark, method): n, mean score in points with its 95 % bootstrap CI (rounded
    to 0.1), failed items (from ``df.attrs["failures"]``); POPE rows add F1."""
    from .. import metrics
    from ..stats import bootstrap_ci

    failures = df.attrs.get("failures", [])
    rows = []
    for (fam, meth), g in df.groupby(["family", "method"], sort=False):
        mean, lo, hi = bootstrap_ci(g["score"].to_numpy(float) * 100)
        row = {"benchmark": fam, "method": meth, "n": len(g), "score": round(mean, 1),
               "ci_lo": round(lo, 1), "ci_hi": round(hi, 1),
               "failed": sum(1 for d in failures if d.get("family") == fam and d.get("method") == meth)}
        if fam.startswith("pope"):
            row["pope_f1"] = round(metrics.pope(list(g["prediction"]), [a[0] for a in g["answers"]])["f1"] * 100, 1)
        rows.append(row)
    seen = {(r["benchmark"], r["method"]) for r in rows}
    for fam, meth in sorted({(d.get("family"), d.get("method")) for d in failures} - seen):
        rows.append({"benchmark": fam, "method": meth, "n": 0, "score": float("nan"), "ci_lo": float("nan"),
                     "ci_hi": float("nan"),
                     "failed": sum(1 for d in failures if d.get("family") == fam and d.get("method") == meth)})
    return pd.DataFrame(rows)


__all__ = ["run", "merge", "load", "summary", "shard_path", "read_lines", "METHOD_NAMES"]
