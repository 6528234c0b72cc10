"""Batch runs that lose, duplicate and mix nothing (issue: reliability).

Real processes, real files: a docvqa-format dataset on disk with every tenth image's bytes
replaced by garbage (a real unreadable input, not a mock), the random-init reference model
saved with save_pretrained, ``python -m egg run`` in subprocesses, SIGKILL, two writers.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from egg.runs import runner
from egg.runs.store import RecordStore, StoreLocked, read_lines

REPO = Path(__file__).resolve().parent.parent
BAD_EVERY = 10


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _cmd(ref_dir, data, out, n, *extra):
    return [sys.executable, "-m", "egg", "run", "--model", str(ref_dir), "--benchmark", "docvqa", "--method", "base",
            "--data", str(data), "--n", str(n), "--out", str(out), "--no-progress",
            "--option", "max_new_tokens=2", *extra]


def faulty_docvqa(root: Path, n: int) -> Path:
    """A docvqa fixture of n items whose images i % 10 == 3 are not images."""
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from egg import datasets

    datasets.write_fixture("docvqa", root, n=n)
    (f,) = list(root.rglob("*.parquet"))
    t = pq.read_table(f)
    col = t.column("image").to_pylist()
    for i in range(n):
        if i % BAD_EVERY == 3:
            col[i] = {"bytes": b"these bytes are not an image", "path": None}
    t = t.set_column(t.schema.get_field_index("image"), "image", pa.array(col, type=t.schema.field("image").type))
    pq.write_table(t, f)
    return root


def _keys(path):
    lines = read_lines(path, warn=False)[0]
    return [d["key"] for d in lines if not d.get("failed")], [d for d in lines if d.get("failed")]


def test_a_failing_item_is_recorded_and_the_run_goes_on(vlm, tmp_path):
    data = faulty_docvqa(tmp_path / "docvqa", 12)
    out = tmp_path / "run.jsonl"
    df = runner.run(vlm, "docvqa", method="base", n=12, out=out, data=data, progress=False,
                    options={"max_new_tokens": 2})
    assert sorted(df["index"]) == [i for i in range(12) if i % BAD_EVERY != 3]
    failures = df.attrs["failures"]
    assert [d["index"] for d in failures] == [3] and failures[0]["item_id"] == "1003"
    assert "docvqa item 3: could not be read" in failures[0]["error"]
    s = runner.summary(df)
    assert s.loc[0, "n"] == 11 and s.loc[0, "failed"] == 1 and s.loc[0, "ci_lo"] <= s.loc[0, "score"] <= s.loc[0, "ci_hi"]
    # resuming does not retry a failure unless asked; asking retries it (and it fails again)
    again = runner.run(vlm, "docvqa", method="base", n=12, out=out, data=data, resume=True, progress=False,
                       options={"max_new_tokens": 2})
    assert len(again) == 11 and len(again.attrs["failures"]) == 1
    assert len(read_lines(out)[0]) == 12
    runner.run(vlm, "docvqa", method="base", n=12, out=out, data=data, resume=True, retry_failed=True,
               progress=False, options={"max_new_tokens": 2})
    assert len(read_lines(out)[0]) == 13  # one new failure line; loading still counts it once
    assert len(runner.load(out)) == 11 and len(runner.load(out).attrs["failures"]) == 1


@pytest.mark.slow
def test_fault_injection_fifty_items_two_kills_and_resume(ref_dir, tmp_path):
    n = 50
    data = faulty_docvqa(tmp_path / "docvqa", n)
    out = tmp_path / "faults.jsonl"
    rng = random.Random(0)
    for kill in range(2):
        args = () if kill == 0 else ("--resume",)
        before = len(out.read_bytes().splitlines()) if out.exists() else 0
        proc = subprocess.Popen(_cmd(ref_dir, data, out, n, *args), cwd=REPO, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            want = before + rng.randint(3, 12)
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None:
                if out.is_file() and len(out.read_bytes().splitlines()) >= want:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, proc.stderr.read()[-2000:].decode()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    r = subprocess.run(_cmd(ref_dir, data, out, n, "--resume"), cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]  # items failed: the exit status says so
    assert "5 item(s) failed" in r.stderr
    good, bad = _keys(out)
    assert len(good) == len(set(good)) == 45  # every good item exactly once
    assert sorted(d["index"] for d in bad) == [i for i in range(n) if i % BAD_EVERY == 3]  # each bad one, once
    df = runner.load(out)
    s = runner.summary(df)
    assert s.loc[0, "n"] == 45 and s.loc[0, "failed"] == 5


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_runs(ref_dir, tmp_path):
    out = tmp_path / "locked.jsonl"
    first = subprocess.Popen([sys.executable, "-m", "egg", "run", "--model", str(ref_dir), "--benchmark", "text",
                              "--method", "base", "--n", "200", "--out", str(out), "--no-progress"],
                             cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (out.is_file() and out.stat().st_size > 0):
            time.sleep(0.05)
        assert first.poll() is None
        second = subprocess.run([sys.executable, "-m", "egg", "run", "--model", str(ref_dir), "--benchmark", "text",
                                 "--method", "base", "--n", "200", "--out", str(out), "--resume", "--no-progress"],
                                cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert "being written by another process" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait(timeout=30)
    keys = _keys(out)[0]
    assert len(keys) == len(set(keys))  # the first writer's lines only, none twice


def test_lock_is_exclusive_within_a_process_too(tmp_path):
    p = tmp_path / "x.jsonl"
    with RecordStore(p) as s:
        s.append({"key": "a"})
        with pytest.raises(StoreLocked, match="another process"):
            RecordStore(p).__enter__()
    with RecordStore(p) as s:  # released on exit
        s.append({"key": "b"})
    assert [d["key"] for d in read_lines(p)[0]] == ["a", "b"]


def test_non_utf8_and_torn_lines_are_skipped_with_a_count(vlm, tmp_path):
    out = tmp_path / "bytes.jsonl"
    runner.run(vlm, "text", method="base", n=2, out=out, progress=False)
    with open(out, "ab") as f:
        f.write(b'{"key": "x", "caf\xe9": 1}\n{"family": "te')
    with pytest.warns(UserWarning, match="skipped 2 unreadable line"):
        df = runner.load(out)
    assert len(df) == 2
    with pytest.warns(UserWarning, match="skipped"):
        df = runner.run(vlm, "text", method="base", n=3, out=out, resume=True, progress=False)
    assert sorted(df["index"]) == [0, 1, 2]
    with pytest.warns(UserWarning, match="skipped"):
        merged = runner.merge([out], out=tmp_path / "merged.jsonl")
    assert len(merged) == 3
    assert len(json.loads((tmp_path / "merged.jsonl").read_text().splitlines()[0])) > 5


@pytest.mark.slow
def test_two_writers_started_together_never_both_write(ref_dir, tmp_path):
    out = tmp_path / "race.jsonl"
    cmd = [sys.executable, "-m", "egg", "run", "--model", str(ref_dir), "--benchmark", "text", "--method", "base",
           "--n", "6", "--out", str(out), "--no-progress"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    codes = sorted(p.wait(timeout=600) for p in procs)
    errors = [p.stderr.read().decode() for p in procs]
    assert codes == [0, 2], errors
    assert any("being written by another process" in e or "exists; pass resume" in e for e in errors)
    keys = _keys(out)[0]
    assert len(keys) == len(set(keys)) == 6
