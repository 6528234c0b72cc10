"""``python -m egg``: batch runs over benchmarks, shard merging, benchmark listing.

    python -m egg run --model PATH_OR_ID --benchmark text|docvqa|... --method egg --n 100 \\
        --out results/run.jsonl [--resume] [--split test] [--seed 0] [--data DIR] [--option k=2]
    python -m egg merge results/run.rank*-of-4.jsonl --out results/run.jsonl
    python -m egg benchmarks
    python -m egg cost [--model PATH_OR_ID] [--device cuda] [--n 4] [--repeats 3] [--json FILE] \\
        [--random-grid 24] [--random-shape auto|none|llava-1.5-7b|llava-1.5-13b]
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _parse_option(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option needs NAME=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        val = json.loads(v)
    except ValueError:
        val = v
    return k.strip(), val


def main(argv=None) -> int:

    p = argparse.ArgumentParser(prog="python -m egg", description="egg batch runs")
    sub = p.add_subparsers(dest="cmd", required=True)

    raw = argparse.RawDescriptionHelpFormatter
    _add_run(sub, raw)
    _add_others(sub, raw)

    a = p.parse_args(argv)
    try:
        return _dispatch(a)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2



def _add_run(sub, raw) -> None:
    from . import synthetic as bench
    from .runs.registry import METHODS

    r = sub.add_parser(
        "run", help="run one method over one benchmark, appending JSON lines", formatter_class=raw,
        epilog="examples:\n"
               "  python -m egg run --benchmark text --method egg --n 100 --out results/text-egg.jsonl\n"
               "  python -m egg run --benchmark text --method egg --n 100 --out results/text-egg.jsonl --resume\n"
               "  python -m egg run --benchmark synthetic:pope --method vicrop-grad-att --n 50 --out pope.jsonl "
               "--batch-size 8\n"
               "  python -m egg run --model llava-hf/llava-1.5-7b-hf --device cuda --benchmark docvqa "
               "--data data/hf/DocVQA --method egg --option k=1 --out docvqa-egg-k1.jsonl")
    r.add_argument("--model", default=None, help="checkpoint directory or Hugging Face id (default: the reference)")
    r.add_argument("--benchmark", required=True,
                   help="a real benchmark (python -m egg benchmarks) or a procedural family "
                        f"{list(bench.FAMILIES)}; vstar, pope and gqa are both and mean the real benchmark: "
                        "write synthetic:pope for the family")
    r.add_argument("--method", default="egg", choices=list(METHODS), help="the method (default egg)")
    r.add_argument("--n", "--num-items", dest="n", type=int, default=None,
                   help="items (default: 300 procedural, the whole real split); under torchrun spell it "
                        "--num-items (torchrun reads --n as its own --nnodes/--nproc-per-node)")
    r.add_argument("--start", type=int, default=0, help="first item index (default 0)")
    r.add_argument("--out", required=True, help="JSON-lines output (per-rank shard files when sharded)")
    r.add_argument("--resume", action="store_true", help="keep finished items in --out, run the rest")
    r.add_argument("--retry-failed", action="store_true",
                   help="with --resume: run again the items an earlier run recorded as failed")
    r.add_argument("--split", default=None, help="procedural split: train/val/test (default test)")
    r.add_argument("--seed", type=int, default=0, help="procedural benchmark seed (default 0)")
    r.add_argument("--data", default=None, help="local copy of a real benchmark's dataset")
    r.add_argument("--device", default=None, help="e.g. cuda (default: cuda if available, else cpu)")
    r.add_argument("--option", action="append", type=_parse_option, default=[],
                   help="method option NAME=VALUE (JSON value), repeatable, e.g. --option k=1")
    r.add_argument("--batch-size", type=int, default=1,
                   help="questions per model pass for egg and the ViCrop methods (egg.ground_batch, "
                        "egg.vicrop_batch; same records as single calls; default 1), e.g. --batch-size 8 on a GPU")
    r.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    r.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: this process's share of the available cores)")



def _add_others(sub, raw) -> None:
    m = sub.add_parser("merge", help="merge shard files into one records file", formatter_class=raw,
                       epilog="example:\n  python -m egg merge results/docvqa-egg.rank*-of-8.jsonl "
                              "--out results/docvqa-egg.jsonl")
    m.add_argument("shards", nargs="+", help="the shard files (records files) to join")
    m.add_argument("--out", required=True, help="the merged records file to write")

    sub.add_parser("benchmarks", help="list the real benchmarks", formatter_class=raw,
                   epilog="example:\n  python -m egg benchmarks")

    g = sub.add_parser("ground", help="ground one question on your own image: answer, boxes, overlay figure",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  python -m egg ground photo.jpg \"what is written on the sign?\" "
                              "--out sign.png\n  python -m egg ground scan.png \"total?\" --model "
                              "llava-hf/llava-1.5-7b-hf --device cuda --json result.json")
    g.add_argument("image", help="image file (PNG, JPEG, ...)")
    g.add_argument("question", help="the question, quoted")
    g.add_argument("--model", default=None, help="checkpoint dir or Hub id (default: the reference model)")
    g.add_argument("--device", default=None, help="e.g. cuda (default: cuda if available, else cpu)")
    g.add_argument("--out", default=None, help="overlay figure to save (default: <image stem>.egg.png beside it)")
    g.add_argument("--json", default=None, help="also save the Grounding as JSON (reload: egg.Grounding.from_json)")
    g.add_argument("--option", action="append", type=_parse_option, default=[],
                   help="egg.ground option NAME=VALUE (JSON value), repeatable, e.g. --option k=1")

    c = sub.add_parser("cost", formatter_class=raw,
                       epilog="examples:\n  python -m egg cost --n 8 --json results/cost.json\n"
                              "  python -m egg cost --model llava-hf/llava-1.5-7b-hf --device cuda --dtype bfloat16 "
                              "--random-grid 0",
                       help="what grounding costs: each method as a multiple of the base answer, "
                                    "measured in one run (egg.runs.cost)")
    c.add_argument("--model", default=None, help="checkpoint dir or Hub id (default: the reference model)")
    c.add_argument("--device", default=None, help="e.g. cuda (default: cpu)")
    c.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: the checkpoint's)")
    c.add_argument("--n", type=int, default=4, help="questions per family (default 4)")
    c.add_argument("--families", default="text,vstar,doc", help="comma-separated families (default text,vstar,doc)")
    c.add_argument("--seed", type=int, default=0, help="benchmark seed (default 0)")
    c.add_argument("--iterations", type=int, default=3, help="depth of the fixed-depth EGG runs (default 3)")
    c.add_argument("--repeats", type=int, default=3,
                   help="timing rounds (default 3; each figure is the median); later rounds interleave the methods")
    c.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the available cores)")
    c.add_argument("--json", default=None, help="also write the numbers to this file")
    c.add_argument("--no-figures", action="store_true",
                   help="skip the performance figures (iteration vs forward, memory, batch-8 throughput)")
    c.add_argument("--random-grid", type=int, default=24,
                   help="also measure a random-init LLaVA with GRID x GRID tokens per image (default 24, LLaVA-1.5's; "
                        "0 = skip), with and without gradient checkpointing")
    c.add_argument("--random-shape", default="auto", choices=["auto", "none", "llava-1.5-7b", "llava-1.5-13b"],
                   help="also measure a random-init model of that real shape, built on --device in --dtype "
                        "(default bfloat16) from a config, no download; auto (default): llava-1.5-7b when a CUDA GPU "
                        "is present, else none")
    c.add_argument("--shape-layers", type=int, default=None,
                   help="keep only this many decoder layers of --random-shape (its real widths on a CPU; e.g. 2)")
    c.add_argument("--figures", type=_figure_list, default=",".join(FIGURE_NAMES),
                   help=f"which performance figures to measure, comma-separated (default {','.join(FIGURE_NAMES)})")


FIGURE_NAMES = ("iteration", "memory", "batch")  # egg.runs.perf.FIGURES, without importing torch to parse


def _figure_list(text: str) -> tuple:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in names if x not in FIGURE_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown figures {bad or [text]}; choose from {','.join(FIGURE_NAMES)}")
    return names


class UserError(Exception):
    """A mistake in the command line or its files: one line on stderr, exit status 2."""


def _dispatch(a) -> int:
    from .runs.store import StoreLocked

    try:
        if a.cmd == "run":
            return _run(a)
        if a.cmd == "merge":
            from .runs import runner

            df = runner.merge(a.shards, out=a.out)
            print(f"merged {len(df)} records into {a.out}")
            return _report(df)
    except (OSError, StoreLocked) as e:  # files: exists, missing, locked, not writable
        raise UserError(str(e)) from None
    except (ValueError, TypeError) as e:  # bad names, options, sizes: egg's own messages
        if a.cmd in ("run", "merge"):
            raise UserError(str(e)) from None
        raise
    if a.cmd == "benchmarks":
        from . import datasets as benchmarks

        for b in benchmarks.BENCHMARKS.values():
            cfg = f" ({b.config})" if b.config else ""
            print(f"{b.name:18s} {b.dataset}{cfg} [{b.split}]  metric={b.metric}  lmms-eval task={b.lmms_task}")
        return 0
    if a.cmd == "cost":
        return _cost(a)
    if a.cmd == "ground":
        return _ground(a)
    return 2  # pragma: no cover


def _ground(a) -> int:
    """Answer one question on one image with EGG; print the answer and boxes; save the overlay."""
    from pathlib import Path

    from .api import answer, load_model
    from .figures.base import save_figure
    from .images import load_image
    from .method.zoom import ground
    from .threads import set_threads

    try:
        image = load_image(a.image)
        set_threads()
        vlm = load_model(a.model, device=a.device)
        base = answer(vlm, image, a.question)
        g = ground(vlm, image, a.question, **dict(a.option))
    except (OSError, ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    print(f"question: {a.question}")
    print(f"answer (base model): {base!r}")
    print(f"answer (EGG):        {g.answer!r}  (state {g.best_index} of {len(g.trace) - 1} zooms)")
    for i, b in enumerate(g.boxes, 1):
        print(f"box {i}: ({', '.join(f'{v:g}' for v in b)})")
    out = Path(a.out) if a.out else Path(a.image).with_suffix(".egg.png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 7))
    g.plot(ax=ax, image=image)
    written = save_figure(fig, out.stem, out.resolve().parent, formats=("png",))
    print(f"overlay: {written[0]}")
    if a.json:
        Path(a.json).write_text(g.to_json())
        print(f"grounding: {a.json}")
    return 0


def _run(a) -> int:
    from .runs import runner
    from .threads import set_threads

    _check_writable(a.out)
    world = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or 1)
    set_threads(a.threads, processes=world)
    df = runner.run(a.model, a.benchmark, method=a.method, n=a.n, start=a.start, out=a.out, resume=a.resume,
                    split=a.split, seed=a.seed, options=dict(a.option), data=a.data, device=a.device,
                    progress=not a.no_progress, retry_failed=a.retry_failed, batch_size=a.batch_size)
    return _report(df)


def _report(df) -> int:
    """Print the summary (with CIs and failures); exit status 1 when items failed."""
    from .runs import runner

    failures = df.attrs.get("failures", [])
    if len(df) or failures:
        print(runner.summary(df).to_string(index=False))
    if failures:
        first = failures[0]
        print(f"{len(failures)} item(s) failed (first: {first.get('family')} item {first.get('index')}: "
              f"{first.get('error')}); fix the cause and rerun with --resume --retry-failed", file=sys.stderr)
        return 1
    return 0


def _check_writable(out) -> None:
    """Fail before the model loads when --out cannot be written."""
    import os
    from pathlib import Path

    p = Path(out)
    if p.is_dir():
        raise UserError(f"--out {out!r} is a directory; give a file path such as {str(p / 'run.jsonl')!r}")
    parent = p.parent if str(p.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"--out {out!r} cannot be created: {str(probe)!r} is a file, not a directory")
    if not os.access(probe, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"--out {out!r} is not writable (no write permission on {str(probe)!r})")


def _cost(a) -> int:
    """The cost benchmark's command line (its measurement is egg.runs.cost, shared with notebook 08)."""
    from pathlib import Path

    import torch

    from .api import REFERENCE_DIR
    from .runs import cost, perf
    from .threads import set_threads

    set_threads(a.threads)
    if a.model is None and not REFERENCE_DIR.is_dir():
        print(f"[cost] no trained reference at {REFERENCE_DIR}; using a random-init reference model")
    vlm = cost.reference_or_random(a.model, device=a.device, dtype=a.dtype)
    items = [bench_item for f in a.families.split(",") for bench_item in _items(f, a.n, a.seed)]
    print(f"[cost] {vlm!r}; {len(items)} questions; torch threads {torch.get_num_threads()}")
    report = cost.run(vlm, items, iterations=a.iterations, repeats=a.repeats)
    print(report.format())
    out = report.to_dict()
    if not a.no_figures:
        print("\n[cost] performance figures (each the median of interleaved rounds, measured in this run)")
        out["figures"] = {"model": perf.figures(vlm, items, repeats=a.repeats, which=a.figures)}
        print(perf.format_figures(repr(vlm), out["figures"]["model"], report))
    if a.random_grid:
        g = a.random_grid
        _random_figures(lambda ckpt: perf.random_llava(g, gradient_checkpointing=ckpt), f"random{g}", items, a, out)
    shape = a.random_shape
    if shape == "auto":
        shape = "llava-1.5-7b" if torch.cuda.is_available() else "none"
    if shape != "none":
        device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cpu":
            print(f"[cost] {shape} at random on the CPU: its weights alone take GBs of memory and a question "
                  "minutes; this figure is meant for a GPU (--device cuda)")
        _random_figures(lambda ckpt: perf.random_shape(shape, device, a.dtype or "bfloat16", ckpt,
                                                       layers=a.shape_layers), shape, items, a, out)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


def _random_figures(build, key: str, items: list, a, out: dict) -> None:
    """A random model's figures (``build(checkpointing)``): ``ground`` against ``answer`` per
    question, the performance figures, and peak memory again with gradient checkpointing
    (one model at a time: a 7B model's weights are freed before the next is built)."""
    import gc as collector

    from .runs import cost, perf

    out.setdefault("figures", {})
    vlm = build(False)
    rep = cost.run(vlm, items, iterations=a.iterations, repeats=a.repeats, names=["egg-full"])
    out["figures"][key] = {**perf.figures(vlm, items, repeats=a.repeats, which=a.figures), "cost": rep.to_dict()}
    print(perf.format_figures(f"{vlm!r}", out["figures"][key], rep))
    print(f"  per question: answer {rep.base_seconds:.3f} s, egg.ground {rep.rows['egg-full']['sec_per_q']:.3f} s")
    del vlm, rep
    collector.collect()
    if "memory" not in a.figures:
        return
    mem = perf.memory(build(True), items)
    out["figures"][f"{key}_checkpointing_memory"] = mem
    print(f"  with gradient_checkpointing=True: peak memory ground = {mem['ratio']:.2f} x answer "
          f"({mem['ground']['peak_mb']:.1f} MB vs {mem['answer']['peak_mb']:.1f} MB); = {mem['ratio_same_prompt']:.2f} x "
          f"answering over the images it chose ({mem['same_prompt']['peak_mb']:.1f} MB)")


def _items(family: str, n: int, seed: int) -> list:
    from . import synthetic

    return [synthetic.item(family, "test", i, seed) for i in range(n)]


if __name__ == "__main__":
    sys.exit(main())
