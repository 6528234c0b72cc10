"""python -m egg ground / help: the command-line front door."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _egg(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "egg", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_ground_command_prints_answer_and_boxes_and_saves_the_overlay(ref_dir, scene, tmp_path):
    img = tmp_path / "scene.png"
    scene.save(img)
    r = _egg("ground", img, "what word is on the red sign ?", "--model", ref_dir, "--json", tmp_path / "g.json",
             "--option", "stopping=\"fixed\"", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "answer (EGG):" in r.stdout and "box 1: (" in r.stdout
    assert (tmp_path / "scene.egg.png").stat().st_size > 1000
    g = json.loads((tmp_path / "g.json").read_text())
    assert g["method"] == "egg" and g["boxes"] and g["params"]["k"] == 2


def test_user_errors_are_one_line_with_exit_2(tmp_path):
    r = _egg("ground", tmp_path / "missing.png", "what ?")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: image file not found") and "Traceback" not in r.stderr
    r = _egg("run", "--benchmark", "text", "--method", "base", "--option", "nosuch=1", "--n", "1",
             "--out", tmp_path / "x.jsonl")
    assert r.returncode == 2 and "has no option(s) ['nosuch']" in r.stderr and "Traceback" not in r.stderr


def test_help_has_examples_and_every_flag_says_what_it_does():
    import argparse

    from egg.__main__ import main

    for cmd in ("ground", "run", "merge", "benchmarks", "cost"):
        r = _egg(cmd, "--help")
        assert r.returncode == 0 and "example" in r.stdout and f"python -m egg {cmd}" in r.stdout, cmd
    # every option of every subcommand has a help text (argparse's own parser, not the printed text)
    seen = {}
    orig = argparse.ArgumentParser.parse_args

    def grab(self, args=None, namespace=None):
        for action in self._subparsers._group_actions[0].choices.items() if self._subparsers else []:
            seen[action[0]] = [(a.dest, a.help) for a in action[1]._actions if a.dest != "help"]
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = grab
    try:
        try:
            main(["benchmarks"])
        except SystemExit:
            pass
    finally:
        argparse.ArgumentParser.parse_args = orig
    missing = [(cmd, dest) for cmd, acts in seen.items() for dest, h in acts if not h]
    assert set(seen) == {"run", "merge", "benchmarks", "ground", "cost"} and not missing, missing


def test_run_with_batch_size_writes_the_records_of_single_calls(ref_dir, tmp_path):
    base = ["run", "--model", ref_dir, "--benchmark", "text", "--n", "3", "--option", "max_iterations=1",
            "--no-progress"]
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    assert _egg(*base, "--out", one).returncode == 0
    r = _egg(*base, "--out", many, "--batch-size", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    pick = lambda p: [(d["index"], d["prediction"], d["boxes"]) for d in map(json.loads, p.read_text().splitlines())]
    assert pick(many) == pick(one)
    r = _egg(*base, "--out", tmp_path / "zero.jsonl", "--batch-size", "0")
    assert r.returncode == 2 and "batch_size must be a positive integer" in r.stderr and "Traceback" not in r.stderr
