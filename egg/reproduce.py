"""Run every notebook with papermill: `python -m egg.reproduce [--n 300] [--only 02,03]`.

With default parameters the executed notebooks are also written back to `notebooks/`, so
the committed outputs (which nbval checks) are exactly what `make reproduce` produced.
With other parameters (`--n`, `--model`, ...) they go to `--out` only, leaving the committed
notebooks untouched. Figures and tables go to `figures/` either way. A notebook that fails
stops the run and names itself; the ones already executed stay written.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def notebooks(only: str | None = None) -> list[Path]:
    nbs = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        keys = {k.strip() for k in only.split(",") if k.strip()}
        nbs = [p for p in nbs if p.name[:2] in keys or p.stem in keys]
        if not nbs:
            raise SystemExit(f"--only {only!r} matches no notebook in {NOTEBOOKS}")
    return nbs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="items per family (papermill parameter n)")
    ap.add_argument("--model", default=None, help="model path or hub id (papermill parameter model)")
    ap.add_argument("--device", default=None, help="device parameter, e.g. cuda")
    ap.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 02,03")
    ap.add_argument("--out", default="out", help="folder for executed notebooks")
    ap.add_argument("--resume", action="store_true",
                    help="reuse results/records.jsonl from an interrupted run (default: start afresh, so "
                         "records computed by older code are never mixed in)")
    a = ap.parse_args(argv)

    import papermill as pm

    params = {k: v for k, v in {"n": a.n, "model": a.model, "device": a.device}.items() if v is not None}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (ROOT / "figures").mkdir(exist_ok=True)
    nbs = notebooks(a.only)
    records = ROOT / "results" / "records.jsonl"
    if records.exists() and not a.resume:
        records.unlink()
    t_all = time.time()
    for i, nb in enumerate(nbs, 1):
        t0 = time.time()
        print(f"[{i}/{len(nbs)}] {nb.name} ...", flush=True)
        target = out / nb.name
        try:
            pm.execute_notebook(str(nb), str(target), parameters=params, cwd=str(ROOT), progress_bar=False,
                                kernel_name="python3")
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            print(f"FAILED: {nb.name}: {e}", file=sys.stderr)
            return 1
        if not params:
            shutil.copyfile(target, nb)
        print(f"[{i}/{len(nbs)}] {nb.name} done in {time.time() - t0:.0f}s", flush=True)
    print(f"all {len(nbs)} notebooks in {time.time() - t_all:.0f}s; executed copies in {out}/, figures in figures/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
