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
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import egg.bench as bench  # noqa: E402
from egg.api import REFERENCE_DIR, answer, ground, load_model, vicrop  # noqa: E402


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: resource's max RSS (monotonic, coarse)
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if sys.platform == "darwin" else r * 1024


class PeakRSS:
    """Peak resident memory above the starting level during the block (sampling thread)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = 0

    def __enter__(self):
        self.start = _rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()

        def run():
            while not self._stop.is_set():
                self.peak = max(self.peak, _rss_bytes())
                time.sleep(self.interval)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.extra_mb = (self.peak - self.start) / 2**20
        self.cuda_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
        return False


def _vlm(args):
    if args.model is None and not REFERENCE_DIR.is_dir():
        from egg.adapters import VLM
        from egg.reference.build import ReferenceConfig, build_model, build_processor

        print(f"[cost] no trained reference at {REFERENCE_DIR}; using a random-init reference model")
        cfg = ReferenceConfig()
        proc = build_processor(cfg)
        return VLM.from_model(build_model(cfg, proc.tokenizer, seed=0), proc, source="random-init reference")
    return load_model(args.model, device=args.device, dtype=args.dtype)


def _methods(iterations: int):
    def base(vlm, item):
        a = vlm.adapter
        c0 = a.counter.copy()
        text = answer(vlm, item.image, item.question)
        return text, a.counter.copy() - c0

    def g(**kw):
        def run(vlm, item):
            r = ground(vlm, item.image, item.question, **kw)
            return r.answer, r.cost

        return run

    def v(variant):
        def run(vlm, item):
            r = vicrop(vlm, item.image, item.question, variant=variant)
            return r.answer, r.cost

        return run

    return {
        "base": base,
        "egg-1-step": g(stopping="fixed", fixed_n=1),
        "egg-full": g(),  # spatial-entropy rule, cap 4
        f"egg-fixed-{iterations}": g(stopping="fixed", fixed_n=iterations),
        "vicrop-rel-att": v("rel-att"),
        "vicrop-grad-att": v("grad-att"),
        "vicrop-pure-grad": v("pure-grad"),
    }


def measure(vlm, items, fn) -> dict:
    fn(vlm, items[0])  # warm-up (lazy inits, allocator)
    times, counts = [], []
    with PeakRSS() as mem:
        for it in items:
            t0 = time.perf_counter()
            _, cost = fn(vlm, it)
            times.append(time.perf_counter() - t0)
            counts.append(cost)
    return {
        "sec_per_q": float(np.mean(times)),
        "sec_p90": float(np.percentile(times, 90)),
        "forward": float(np.mean([c.forward for c in counts])),
        "backward": float(np.mean([c.backward for c in counts])),
        "images_encoded": float(np.mean([c.images_encoded for c in counts])),
        "generated_tokens": float(np.mean([c.generated_tokens for c in counts])),
        "peak_rss_extra_mb": mem.extra_mb,
        "peak_cuda_mb": mem.cuda_mb,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="local checkpoint dir or Hub id (default: the reference)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--n", type=int, default=4, help="questions per family")
    ap.add_argument("--families", default="text,vstar,doc", help="comma-separated benchmark families")
    ap.add_argument("--iterations", type=int, default=3, help="depth of the fixed-depth EGG runs and cache test")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    vlm = _vlm(args)
    items = [bench.item(f, "test", i) for f in args.families.split(",") for i in range(args.n)]
    print(f"[cost] {vlm!r}; {len(items)} questions; torch threads {torch.get_num_threads()}")

    rows = {}
    for name, fn in _methods(args.iterations).items():
        rows[name] = measure(vlm, items, fn)
    base = rows["base"]["sec_per_q"]
    hdr = f"{'method':<18}{'s/q':>9}{'x base':>8}{'fwd':>6}{'bwd':>6}{'enc':>6}{'tok':>6}{'+RSS MB':>9}"
    print(hdr)
    print("-" * len(hdr))
    for name, r in rows.items():
        print(f"{name:<18}{r['sec_per_q']:>9.3f}{r['sec_per_q'] / base:>8.2f}{r['forward']:>6.1f}{r['backward']:>6.1f}"
              f"{r['images_encoded']:>6.1f}{r['generated_tokens']:>6.1f}{r['peak_rss_extra_mb']:>9.1f}")

    # embedding cache: same loop, cached vs recomputed each iteration
    kw = dict(stopping="fixed", fixed_n=args.iterations)

    def egg_run(cache_visual: bool):
        def run(v, it):
            r = ground(v, it.image, it.question, cache_visual=cache_visual, **kw)
            return r.answer, r.cost

        return run

    cached = measure(vlm, items, egg_run(True))
    fresh = measure(vlm, items, egg_run(False))
    same = all(
        ground(vlm, it.image, it.question, cache_visual=True, **kw).boxes
        == ground(vlm, it.image, it.question, cache_visual=False, **kw).boxes
        for it in items[:3]
    )
    speedup = fresh["sec_per_q"] / cached["sec_per_q"]
    print(f"\nembedding cache, EGG fixed {args.iterations} iterations:")
    print(f"  recomputed each iteration: {fresh['sec_per_q']:.3f} s/q, {fresh['images_encoded']:.1f} images encoded")
    print(f"  cached across iterations:  {cached['sec_per_q']:.3f} s/q, {cached['images_encoded']:.1f} images encoded")
    fewer = fresh["images_encoded"] / max(cached["images_encoded"], 1e-9)
    print(f"  speed-up x{speedup:.2f}; encodings x{fewer:.2f} fewer; same boxes: {same}")
    out = {"model": vlm.adapter.describe(), "n_questions": len(items), "methods": rows,
           "cache": {"cached": cached, "recomputed": fresh, "speedup": speedup, "same_boxes": same}}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
