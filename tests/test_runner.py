"""egg.runner / python -m egg: JSON-lines runs, resume, SIGKILL safety, sharding + merge.

Uses the random-init reference model (saved once with save_pretrained) and the cheap
"base" method so the subprocess tests stay short.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from egg.runs import runner

REPO = Path(__file__).resolve().parent.parent
DROP = ["seconds"]  # wall time: the only field that differs between identical runs


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "egg", *map(str, args)], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=kw.get("timeout", 600))


def _ids(path):
    return [d["index"] for d in runner.read_lines(path)]


@pytest.mark.slow
def test_run_resume_and_refuse_overwrite(vlm, tmp_path):
    out = tmp_path / "run.jsonl"
    df = runner.run(vlm, "text", method="base", n=3, out=out, progress=False)
    assert list(df["index"]) == [0, 1, 2] and set(df["method"]) == {"base"} and set(df["family"]) == {"text"}
    lines = runner.read_lines(out)
    assert [d["index"] for d in lines] == [0, 1, 2]
    assert all(d["benchmark"] == "text" and d["item_id"] == str(d["index"]) for d in lines)
    with pytest.raises(FileExistsError, match="resume"):
        runner.run(vlm, "text", method="base", n=3, out=out, progress=False)
    before = out.read_text()
    df2 = runner.run(vlm, "text", method="base", n=5, out=out, resume=True, progress=False)
    assert out.read_text().startswith(before)  # old lines untouched, 2 new appended
    assert _ids(out) == [0, 1, 2, 3, 4] and list(df2["index"]) == [0, 1, 2, 3, 4]
    assert list(df2["prediction"][:3]) == list(df["prediction"])
    # another configuration in the same file is refused, naming the difference, never pooled
    with pytest.raises(ValueError, match=r"another configuration \(params: file \{'max_new_tokens': 8\}, this run "):
        runner.run(vlm, "text", method="base", n=2, out=out, resume=True, progress=False,
                   options={"max_new_tokens": 4})
    assert len(runner.read_lines(out)) == 5


def test_torn_last_line_is_tolerated(vlm, tmp_path):
    out = tmp_path / "torn.jsonl"
    runner.run(vlm, "doc", method="base", n=2, out=out, progress=False)
    with open(out, "a") as f:
        f.write('{"family": "doc", "index": 2, "meth')  # a write cut by SIGKILL
    assert _ids(out) == [0, 1]  # readers skip it
    runner.run(vlm, "doc", method="base", n=4, out=out, resume=True, progress=False)
    assert _ids(out) == [0, 1, 2, 3]
    assert all(line.startswith("{") and line.endswith("}") for line in out.read_text().splitlines())


def test_errors(vlm, tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        runner.run(vlm, "text", method="magic", n=1)
    with pytest.raises(ValueError, match="unknown family or benchmark 'mmmu'"):
        runner.run(vlm, "mmmu", method="base", n=1)
    with pytest.raises(TypeError, match="no option"):
        runner.run(vlm, "text", method="base", n=1, options={"k": 3})
    with pytest.raises(ValueError, match="rank"):
        runner.run(vlm, "text", method="base", n=1, rank=2, world_size=2)


def test_real_benchmark_fixture_run(vlm, tmp_path):
    pytest.importorskip("datasets")
    from egg import datasets as benchmarks

    data = benchmarks.write_fixture("docvqa", tmp_path / "docvqa", n=3)
    out = tmp_path / "docvqa.jsonl"
    df = runner.run(vlm, "docvqa", method="base", out=out, data=data, progress=False)
    assert len(df) == 3 and set(df["family"]) == {"docvqa"} and set(df["split"]) == {"validation"}
    lines = runner.read_lines(out)
    assert [d["item_id"] for d in lines] == ["1000", "1001", "1002"]
    items = benchmarks.load("docvqa", path=data)
    for d, it in zip(lines, items):
        assert d["score"] == benchmarks.score("docvqa", d["prediction"], it)
    with pytest.raises(ValueError, match="has 3 items"):
        runner.run(vlm, "docvqa", method="base", n=5, data=data, progress=False)
    with pytest.raises(ValueError, match="needs ground-truth boxes"):
        runner.run(vlm, "docvqa", method="oracle", n=1, data=data, progress=False)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(ref_dir, tmp_path):
    n = 8
    out = tmp_path / "killed.jsonl"
    cmd = [sys.executable, "-m", "egg", "run", "--model", str(ref_dir), "--benchmark", "text", "--method", "base",
           "--n", str(n), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            if out.is_file() and len(out.read_bytes().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished (or died) before it could be killed: " + proc.stderr.read()[-2000:].decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = _ids(out)
    assert 2 <= len(done) < n and done == list(range(len(done)))
    r = _cli("run", "--model", ref_dir, "--benchmark", "text", "--method", "base", "--n", n, "--out", out, "--resume",
             "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    ids = _ids(out)
    assert sorted(ids) == list(range(n)) and len(ids) == len(set(ids))  # complete, no duplicates
    assert ids[:len(done)] == done  # finished items were not recomputed


def _launcher():
    """``accelerate launch`` with 2 processes, as on a 2-GPU machine. ``--multi_gpu`` is the
    launcher that starts several processes (through torch.distributed.run) and sets RANK /
    WORLD_SIZE / LOCAL_RANK; egg shards by those alone (no process group), so it runs on CPU
    too. (``--cpu --num_processes 2`` would start one process on a machine without MPI.)"""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "egg"]


@pytest.mark.slow
def test_sharded_run_merges_to_single_process_table(ref_dir, tmp_path):
    n = 5
    out = tmp_path / "sharded.jsonl"
    args = ["run", "--model", str(ref_dir), "--benchmark", "synthetic:gqa", "--method", "base", "--num-items", str(n), "--out", str(out),
            "--no-progress"]
    r = subprocess.run(_launcher() + args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    shards = sorted(tmp_path.glob("sharded.rank*-of-2.jsonl"))
    assert [s.name for s in shards] == ["sharded.rank0-of-2.jsonl", "sharded.rank1-of-2.jsonl"]
    assert _ids(shards[0]) == [0, 2, 4] and _ids(shards[1]) == [1, 3]
    merged = tmp_path / "merged.jsonl"
    r = _cli("merge", *shards, "--out", merged)
    assert r.returncode == 0, r.stderr[-3000:]
    # the single-process reference loads the same checkpoint the same way (an in-memory model and
    # its save_pretrained copy get different fingerprints, hence different record keys)
    single = runner.run(str(ref_dir), "synthetic:gqa", method="base", n=n, out=tmp_path / "single.jsonl", progress=False,
                        device="cpu")
    got = runner.load(merged)
    assert list(got["index"]) == list(range(n))
    a = got.drop(columns=DROP).reset_index(drop=True)
    b = single.drop(columns=DROP).reset_index(drop=True)
    assert a.to_json() == b.to_json()
    # merging is idempotent and tolerant of duplicates (a shard given twice)
    again = runner.merge([*shards, shards[0]], out=tmp_path / "again.jsonl")
    assert again.drop(columns=DROP).to_json() == a.to_json()


def test_env_sharding_in_process(vlm, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    df = runner.run(vlm, "synthetic:pope", method="base", n=7, out=tmp_path / "s.jsonl", progress=False)
    assert list(df["index"]) == [1, 4]
    assert (tmp_path / "s.rank1-of-3.jsonl").is_file()


def test_names_that_are_both_a_family_and_a_real_benchmark(tmp_path):
    """vstar, pope and gqa: the runner (Table 1 reproduction) means the real benchmark, the
    notebooks' runs mean the procedural family, and a prefix chooses either explicitly."""
    from egg.runs.loop import ItemSource

    for name in ("vstar", "pope", "gqa"):
        assert ItemSource(name).kind == "procedural"
        assert ItemSource(f"synthetic:{name}", prefer="real").kind == "procedural"
        assert ItemSource(f"synthetic:{name}").name == name
    with pytest.raises(ValueError, match="unknown procedural family 'textvqa'"):
        ItemSource("synthetic:textvqa")
    # the real benchmark is asked for; offline and without a copy it names what to download
    with pytest.raises((ValueError, OSError, RuntimeError), match="(?i)pope"):
        runner.run(None, "pope", method="base", n=1, out=tmp_path / "p.jsonl", progress=False)
    with pytest.raises((ValueError, OSError, RuntimeError), match="(?i)pope"):
        ItemSource("real:pope")


def test_cli_benchmarks_lists_all():
    r = _cli("benchmarks")
    assert r.returncode == 0, r.stderr[-2000:]
    from egg import datasets as benchmarks

    for name in benchmarks.names():
        assert name in r.stdout


def test_runs_write_progress_lines_where_reproduce_reads_them(vlm, tmp_path, monkeypatch):
    """With the bars off (notebooks), a run still reports its phases to $EGG_PROGRESS_LOG."""
    from egg import runs as ex
    from egg.outputs import PROGRESS_ENV

    log = tmp_path / "progress.log"
    monkeypatch.setenv(PROGRESS_ENV, str(log))
    ex.run(vlm, {"base": ("base", {})}, ["text"], 3, progress=False)
    lines = log.read_text().splitlines()
    assert lines and lines[-1] == "1 configuration(s) x 1 family: 3/3 results"


def test_reproduce_echoes_each_progress_line_once(tmp_path, capsys):
    import time

    from egg.reproduce import _echo

    log = tmp_path / "progress.log"
    with _echo(log, every=0.02):
        time.sleep(0.05)  # no log yet: nothing to print
        log.write_text("phase one\npha")
        time.sleep(0.1)
        with log.open("a") as f:
            f.write("se two\n")
    out = [line.split("s  ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert out == ["phase one", "phase two"]
