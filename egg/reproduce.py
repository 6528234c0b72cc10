"""Run every notebook with papermill: `python -m egg.reproduce [--n 300] [--only 02,03]`.

With default parameters the executed notebooks replace the committed ones in `notebooks/`
(which nbval checks), but only where something a reader sees changed: timestamps and
durations are stripped, and a notebook whose outputs match the committed ones under
nbval's sanitising rules (`notebooks/sanitize.cfg`) is left byte-for-byte as it was. So
`git status` stays clean after a rerun that reproduced the committed results. With other
parameters (`--n`, `--model`, ...) notebooks, figures and tables all go under `--out`,
leaving the committed ones untouched. A notebook that fails stops its lane and names
itself; the ones already executed stay written.

On the CPU the notebooks run in lanes, one per core (`--jobs`), each kernel on one thread:
this small model's passes gain little from a second thread (`make test`'s one-thread nbval
took 1070 s where `make reproduce` on two took 1239 s). Two lanes each run 1.5-1.9x slower
than one notebook alone on both cores, and still finish sooner: 1149 s against 1239 (CHANGELOG,
stop 56). The notebooks of the shared run (`SHARED_RUN`) stay in one lane, in order; the cost
notebook (`TIMED`) runs after the others, alone, with every core. A lane sets its kernel's
`OMP_NUM_THREADS` to its share of the cores (one of two) whatever the caller's; a user's own
`OMP_NUM_THREADS` holds only for notebooks run one at a time (`--jobs 1`) and the cost notebook.
"""
from __future__ import annotations

import argparse
import base64
import configparser
import contextlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

from .outputs import PROGRESS_ENV

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SANITIZE = NOTEBOOKS / "sanitize.cfg"
#: Metadata that records when and where a notebook ran, not what it shows.
VOLATILE_METADATA = ("papermill", "execution")


#: Notebooks that read one shared run (results/records.jsonl, written by the first): one lane, in order.
SHARED_RUN = ("02", "03", "04", "05", "06")
#: Notebooks that measure time: they run after the others, alone on the machine.
TIMED = ("08",)
#: About how many seconds each notebook took on 2 cores (stop 55's `make timings`; unlisted: 10):
#: only to balance the lanes.
COST = {"02": 151, "03": 8, "04": 144, "05": 138, "06": 35, "08": 42, "09": 686}


def lanes(nbs: list[Path], jobs: int) -> list[list[Path]]:
    """`nbs` but `TIMED` split into at most `jobs` lanes to run at once, each in notebook order:
    the shared run's notebooks together, the costliest groups first onto the least loaded lane."""
    groups: list[list[Path]] = []
    shared: list[Path] = []
    for nb in nbs:
        key = nb.name[:2]
        if key in TIMED:
            continue
        if key in SHARED_RUN:
            if not shared:
                groups.append(shared)
            shared.append(nb)
        else:
            groups.append([nb])
    cost = lambda nb_list: sum(COST.get(nb.name[:2], 10) for nb in nb_list)
    out: list[list[Path]] = [[] for _ in range(max(1, int(jobs)))]
    for g in sorted(groups, key=cost, reverse=True):
        min(out, key=cost).extend(g)
    return [sorted(lane) for lane in out if lane]


def notebooks(only: str | None = None) -> list[Path]:
    nbs = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        keys = {k.strip() for k in only.split(",") if k.strip()}
        nbs = [p for p in nbs if p.name[:2] in keys or p.stem in keys]
        if not nbs:
            raise SystemExit(f"--only {only!r} matches no notebook in {NOTEBOOKS}")
    return nbs


def normalise(nb: dict) -> dict:
    """The notebook without run timestamps, durations and paths (papermill/execution metadata)."""
    for key in VOLATILE_METADATA:
        nb.get("metadata", {}).pop(key, None)
    for cell in nb.get("cells", []):
        for key in VOLATILE_METADATA:
            cell.get("metadata", {}).pop(key, None)
    return nb


def dumps(nb: dict) -> str:
    """nbformat's on-disk layout (one-space indent, sorted keys, no trailing newline, as papermill writes)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False)


def _sanitizers(cfg: Path = SANITIZE) -> list[tuple[re.Pattern, str]]:
    parser = configparser.ConfigParser()
    parser.read(cfg)
    return [(re.compile(parser[s]["regex"]), parser[s]["replace"]) for s in parser.sections()]


#: Widget views carry a fresh random model id on every run.
_WIDGET_ID = (re.compile(r'"model_id": "[0-9a-f]{32}"'), '"model_id": "WIDGET"')


#: Embedded PNGs, which nbval does not compare either (`same_notebook` compares them as pictures).
_PNG = re.compile(r'"image/png": "([^"]*)"')


def visible(nb: dict, sanitizers=None) -> str:
    """What nbval compares: sources and outputs, with the sanitising rules applied (and
    widget ids, which change on every run, masked)."""
    subs = (_sanitizers() if sanitizers is None else sanitizers) + [_WIDGET_ID]
    text = json.dumps([[c.get("source"), [] if _ignored(c) else c.get("outputs", [])] for c in nb.get("cells", [])],
                      sort_keys=True)
    text = _PNG.sub('"image/png": "PNG"', text)  # before the sanitisers, which would rewrite bits of base64
    for rx, rep in subs:
        text = rx.sub(rep, text)
    return text


def same_notebook(old: dict, new: dict) -> bool:
    """Whether a reader sees the same thing in both: equal text, and pictures equal within
    another CPU's float noise (`egg.figures.base.same_picture`)."""
    if visible(old) != visible(new):
        return False
    from .figures.base import same_picture

    a, b = _pngs(old), _pngs(new)
    return len(a) == len(b) and all(x == y or same_picture(x, y) for x, y in zip(a, b))


def _pngs(nb: dict) -> list[bytes]:
    """The notebook's embedded PNGs, decoded from the file as it is (no sanitiser applied)."""
    found = [o.get("data", {}).get("image/png") for c in nb.get("cells", []) if not _ignored(c)
             for o in c.get("outputs", [])]
    return [base64.b64decode("".join(v) if isinstance(v, list) else v) for v in found if v is not None]


def _ignored(cell: dict) -> bool:
    """Cells whose outputs nbval does not compare (measured times)."""
    src = "".join(cell.get("source", []))
    tags = cell.get("metadata", {}).get("tags", [])
    return "NBVAL_IGNORE_OUTPUT" in src or "NBVAL_SKIP" in src or "nbval-ignore-output" in tags or "nbval-skip" in tags


def write_back(executed: Path, committed: Path) -> bool:
    """Replace ``committed`` with the normalised ``executed`` notebook unless both show the
    same thing (`same_notebook`); True when the file was rewritten."""
    new = normalise(json.loads(executed.read_text(encoding="utf-8")))
    if committed.exists():
        old = json.loads(committed.read_text(encoding="utf-8"))
        if same_notebook(old, new):
            return False
    committed.write_text(dumps(new), encoding="utf-8")
    return True


@contextlib.contextmanager
def _echo(log: Path, every: float = 2.0, prefix: str = ""):
    """While the block runs, print each line added to ``log``, indented, timed and after ``prefix``."""
    stop, t0 = threading.Event(), time.time()

    def tail():
        pos, rest = 0, ""
        while True:
            done = stop.wait(every)
            if log.exists():
                with log.open() as f:  # only what was added since the last look
                    f.seek(pos)
                    rest += f.read()
                    pos = f.tell()
            *lines, rest = rest.split("\n")  # a line still being written waits for its newline
            for line in lines:
                print(f"    {prefix}{time.time() - t0:5.0f}s  {line}", flush=True)
            if done:
                return

    th = threading.Thread(target=tail, daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join()


def run_lane(nbs: list[Path], total: dict[str, int], params: dict, out: Path, threads: int | None,
             label: str = "") -> str | None:
    """Execute ``nbs`` in order, each kernel on ``threads`` torch threads (None: as inherited);
    returns the name of the notebook that failed, else None. `total` numbers them in the whole run."""
    import papermill as pm

    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the kernels inherit it
    log = (out / f"progress{label}.log").resolve()
    os.environ[PROGRESS_ENV] = str(log)  # the kernels write their phases there (egg.outputs.progress_line)
    for nb in nbs:
        t0, tag = time.time(), f"[{total[nb.name]}/{len(total)}] {nb.name}"
        print(f"{tag} ...", flush=True)
        target = out / nb.name
        log.write_text("")
        try:
            with _echo(log, prefix=f"{nb.name[:2]} " if label else ""):
                pm.execute_notebook(str(nb), str(target), parameters=params, cwd=str(ROOT), progress_bar=False,
                                    kernel_name="python3")
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            print(f"FAILED: {nb.name}: {e}", file=sys.stderr, flush=True)
            return nb.name
        note = ""
        if not params:
            note = ", notebook updated" if write_back(target, nb) else ", outputs unchanged"
        print(f"{tag} done in {time.time() - t0:.0f}s{note}", flush=True)
    return None


def main(argv=None) -> int:
    from .threads import available_cores, default_threads

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="items per family (papermill parameter n)")
    ap.add_argument("--model", default=None, help="model path or hub id (papermill parameter model)")
    ap.add_argument("--device", default=None, help="device parameter, e.g. cuda")
    ap.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 02,03")
    ap.add_argument("--out", default="out", help="folder for executed notebooks (and, with non-default "
                                                   "parameters, their figures and tables)")
    ap.add_argument("--resume", action="store_true",
                    help="reuse results/records.jsonl from an interrupted run (default: start afresh, so "
                         "records computed by older code are never mixed in)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="notebooks run at once, each kernel on cores/jobs threads (default: one per core on "
                         "the CPU, 1 with --device: the lanes would share one accelerator's memory)")
    a = ap.parse_args(argv)
    if a.jobs is not None and a.jobs < 1:
        raise SystemExit(f"--jobs must be 1 or more, got {a.jobs}")
    jobs = a.jobs or (1 if a.device not in (None, "cpu") else available_cores())

    params = {k: v for k, v in {"n": a.n, "model": a.model, "device": a.device}.items() if v is not None}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = ROOT / "results"
    if params:  # a non-default run must not overwrite the committed figures
        params.update(out_dir=str((out / "figures").resolve()), results_dir=str((out / "results").resolve()))
        results = out / "results"
    (ROOT / "figures").mkdir(exist_ok=True)
    nbs = notebooks(a.only)
    records = results / "records.jsonl"
    if records.exists() and not a.resume:
        records.unlink()
    t_all = time.time()
    total = {nb.name: i for i, nb in enumerate(nbs, 1)}
    plan = lanes(nbs, jobs)
    failed: list[str] = []
    if len(plan) > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        threads = default_threads(len(plan))
        print(f"{len(nbs)} notebooks in {len(plan)} lanes of {threads} thread(s): "
              + " | ".join(",".join(nb.name[:2] for nb in lane) for lane in plan), flush=True)
        with ProcessPoolExecutor(len(plan), mp_context=get_context("spawn")) as pool:
            done = [pool.submit(run_lane, lane, total, params, out, threads, f"-{k}") for k, lane in enumerate(plan)]
            failed = [f.result() for f in done]
    # from here on one lane: the kernels inherit this, torch in each uses the cores this run may use
    os.environ.setdefault("OMP_NUM_THREADS", str(default_threads()))
    if len(plan) == 1:
        failed = [run_lane(plan[0], total, params, out, None)]
    if not any(failed):
        failed.append(run_lane([nb for nb in nbs if nb.name[:2] in TIMED], total, params, out, None))
    failed = [f for f in failed if f]
    if failed:
        print(f"FAILED: {', '.join(failed)}; the notebooks that finished are written", file=sys.stderr)
        return 1
    where = f"figures in {out}/figures" if params else "figures in figures/"
    print(f"all {len(nbs)} notebooks in {time.time() - t_all:.0f}s; executed copies in {out}/, {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
