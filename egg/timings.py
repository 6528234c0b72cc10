"""Time the two commands a newcomer runs, on a fresh clone: `python -m egg.timings` (`make timings`).

Clones the committed HEAD into a temporary folder and runs there, in order, `make setup`
(the virtual environment and installs), `make reproduce` and `make test`, as the README
tells a newcomer. It checks that `make reproduce` left the clone's tree clean, and writes
what it measured to `docs/timings.json`. The README's run times are checked against that
file by `tests/test_readme.py`, so they are a measurement, not a guess (that one test is
left out of the clone's own `make test`, which renews the record it checks). A failing command
stops the run and names itself; nothing is written then.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "docs" / "timings.json"
STEPS = ("setup", "reproduce", "test")
# The clone's `make test` leaves out the one test that compares the README with the record this
# run is about to replace: a stale record must not stop its own renewal.
SKIP_OWN_CHECK = "--deselect tests/test_readme.py::test_readme_run_times_are_the_measured_ones"


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def measure(repo: Path = ROOT, steps=STEPS, log=print) -> dict:
    """Seconds each `make` step took in a fresh clone of `repo`'s HEAD; stops if `make reproduce` dirties the tree."""
    with tempfile.TemporaryDirectory(prefix="egg-timings-") as tmp:
        clone = Path(tmp) / "egg"
        subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
        rec = {"commit": _git("rev-parse", "--short", "HEAD", cwd=clone), "date": time.strftime("%Y-%m-%d"),
               "cores": os.cpu_count(), "seconds": {}}
        for step in steps:
            log(f"make {step} ...")
            t0 = time.time()
            done = subprocess.run(["make", step], cwd=clone, env={**os.environ, "PYTEST_ADDOPTS": SKIP_OWN_CHECK})
            if done.returncode:
                raise SystemExit(f"make {step} failed (exit {done.returncode}) in the fresh clone {clone}")
            rec["seconds"][step] = round(time.time() - t0)
            log(f"make {step}: {rec['seconds'][step]} s")
            if step == "reproduce":
                dirty = _git("status", "--porcelain", cwd=clone)
                if dirty:
                    raise SystemExit(f"make reproduce left the tree dirty:\n{dirty}")
                # the clone's tests check that every file the README cites exists, this record included
                (clone / RECORD.relative_to(ROOT)).write_text(json.dumps(rec, indent=1) + "\n")
        return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(RECORD), help=f"where to write the record (default {RECORD.relative_to(ROOT)})")
    a = ap.parse_args(argv)
    rec = measure()
    Path(a.out).write_text(json.dumps(rec, indent=1) + "\n")
    print(f"wrote {a.out}: {rec['seconds']} on {rec['cores']} cores at {rec['commit']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
