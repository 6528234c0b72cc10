"""Run every notebook with papermill: `python -m egg.reproduce [--n 300] [--only 02,03]`.

With default parameters the executed notebooks replace the committed ones in `notebooks/`
(which nbval checks), but only where something a reader sees changed: timestamps and
durations are stripped, and a notebook whose outputs match the committed ones under
nbval's sanitising rules (`notebooks/sanitize.cfg`) is left byte-for-byte as it was. So
`git status` stays clean after a rerun that reproduced the committed results. With other
parameters (`--n`, `--model`, ...) notebooks, figures and tables all go under `--out`,
leaving the committed ones untouched. A notebook that fails stops the run and names
itself; the ones already executed stay written.
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
def _echo(log: Path, every: float = 2.0):
    """While the block runs, print each line added to ``log``, indented and timed."""
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
                print(f"    {time.time() - t0:5.0f}s  {line}", flush=True)
            if done:
                return

    th = threading.Thread(target=tail, daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join()


def main(argv=None) -> int:
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
    a = ap.parse_args(argv)

    import papermill as pm

    from .threads import default_threads

    # the kernels inherit this: torch in each notebook uses the cores this run may use
    os.environ.setdefault("OMP_NUM_THREADS", str(default_threads()))
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
    log = (out / "progress.log").resolve()
    os.environ[PROGRESS_ENV] = str(log)  # the kernels write their phases there (egg.outputs.progress_line)
    for i, nb in enumerate(nbs, 1):
        t0 = time.time()
        print(f"[{i}/{len(nbs)}] {nb.name} ...", flush=True)
        target = out / nb.name
        log.write_text("")
        try:
            with _echo(log):
                pm.execute_notebook(str(nb), str(target), parameters=params, cwd=str(ROOT), progress_bar=False,
                                    kernel_name="python3")
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            print(f"FAILED: {nb.name}: {e}", file=sys.stderr)
            return 1
        note = ""
        if not params:
            note = ", notebook updated" if write_back(target, nb) else ", outputs unchanged"
        print(f"[{i}/{len(nbs)}] {nb.name} done in {time.time() - t0:.0f}s{note}", flush=True)
    where = f"figures in {out}/figures" if params else "figures in figures/"
    print(f"all {len(nbs)} notebooks in {time.time() - t_all:.0f}s; executed copies in {out}/, {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
