"""``python -m egg``: batch runs over benchmarks, shard merging, benchmark listing.

    python -m egg run --model PATH_OR_ID --benchmark text|docvqa|... --method egg --n 100 \\
        --out results/run.jsonl [--resume] [--split test] [--seed 0] [--data DIR] [--option k=2]
    python -m egg merge results/run.rank*-of-4.jsonl --out results/run.jsonl
    python -m egg benchmarks
"""
from __future__ import annotations

import argparse
import json
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
    from . import bench
    from .experiments import METHODS

    p = argparse.ArgumentParser(prog="python -m egg", description="egg batch runs")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run one method over one benchmark, appending JSON lines")
    r.add_argument("--model", default=None, help="checkpoint directory or Hugging Face id (default: the reference)")
    r.add_argument("--benchmark", required=True,
                   help=f"procedural family {list(bench.FAMILIES)} or a real benchmark (python -m egg benchmarks)")
    r.add_argument("--method", default="egg", choices=list(METHODS))
    r.add_argument("--n", "--num-items", dest="n", type=int, default=None,
                   help="items (default: 300 procedural, the whole real split); under torchrun spell it "
                        "--num-items (torchrun reads --n as its own --nnodes/--nproc-per-node)")
    r.add_argument("--start", type=int, default=0)
    r.add_argument("--out", required=True, help="JSON-lines output (per-rank shard files when sharded)")
    r.add_argument("--resume", action="store_true", help="keep finished items in --out, run the rest")
    r.add_argument("--split", default=None, help="procedural split: train/val/test (default test)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--data", default=None, help="local copy of a real benchmark's dataset")
    r.add_argument("--device", default=None)
    r.add_argument("--option", action="append", type=_parse_option, default=[],
                   help="method option NAME=VALUE (JSON value), repeatable, e.g. --option k=1")
    r.add_argument("--no-progress", action="store_true")

    m = sub.add_parser("merge", help="merge shard files into one records file")
    m.add_argument("shards", nargs="+")
    m.add_argument("--out", required=True)

    sub.add_parser("benchmarks", help="list the real benchmarks")

    a = p.parse_args(argv)
    if a.cmd == "run":
        from . import runner

        df = runner.run(a.model, a.benchmark, method=a.method, n=a.n, start=a.start, out=a.out, resume=a.resume,
                        split=a.split, seed=a.seed, options=dict(a.option), data=a.data, device=a.device,
                        progress=not a.no_progress)
        if len(df):
            print(runner.summary(df).to_string(index=False))
        return 0
    if a.cmd == "merge":
        from . import runner

        df = runner.merge(a.shards, out=a.out)
        print(f"merged {len(df)} records into {a.out}")
        if len(df):
            print(runner.summary(df).to_string(index=False))
        return 0
    if a.cmd == "benchmarks":
        from . import benchmarks

        for b in benchmarks.BENCHMARKS.values():
            cfg = f" ({b.config})" if b.config else ""
            print(f"{b.name:18s} {b.dataset}{cfg} [{b.split}]  metric={b.metric}  lmms-eval task={b.lmms_task}")
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
