"""What grounding costs: base answer vs EGG vs ViCrop, and what the embedding cache saves.

    python benchmarks/cost.py                    # the reference model (random init if untrained)
    python benchmarks/cost.py --model llava-hf/llava-1.5-7b-hf --device cuda --n 5

For each method, over the same questions (procedural benchmark items), it reports the
mean wall time per question, forward / backward passes, images through the vision tower,
generated tokens, and the peak resident memory *above* the level before the method ran
(sampled every 2 ms; on a GPU, also peak CUDA memory). Then ratios to the base answer,
all measured in this one run. Last, the embedding cache: the same fixed-depth EGG run with
visual embeddings cached across iterations (this package's default) and recomputed at
every iteration for every image (as the authors' release does); identical results, the
ratio is the speed-up.

The measurement lives in ``egg.cost`` (shared with notebooks/08_cost.ipynb); this script
is its command line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import egg.bench as bench  # noqa: E402
from egg import cost  # noqa: E402
from egg.api import REFERENCE_DIR  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="local checkpoint dir or Hub id (default: the reference)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--n", type=int, default=4, help="questions per family")
    ap.add_argument("--families", default="text,vstar,doc", help="comma-separated benchmark families")
    ap.add_argument("--seed", type=int, default=0, help="benchmark seed")
    ap.add_argument("--iterations", type=int, default=3, help="depth of the fixed-depth EGG runs and cache test")
    ap.add_argument("--repeats", type=int, default=1, help="timing rounds (rounds after the first interleave the methods)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model is None and not REFERENCE_DIR.is_dir():
        print(f"[cost] no trained reference at {REFERENCE_DIR}; using a random-init reference model")
    vlm = cost.reference_or_random(args.model, device=args.device, dtype=args.dtype)
    items = [bench.item(f, "test", i, args.seed) for f in args.families.split(",") for i in range(args.n)]
    print(f"[cost] {vlm!r}; {len(items)} questions; torch threads {torch.get_num_threads()}")

    report = cost.run(vlm, items, iterations=args.iterations, repeats=args.repeats)
    print(report.format())
    out = report.to_dict()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
