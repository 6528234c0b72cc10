"""egg.benchmarks: the declarative records, loading fixtures in the real datasets' formats
(written by egg from procedural items), scoring, and the offline error."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("datasets", reason="pip install -e .[data]")

from egg import bench  # noqa: E402
from egg import datasets as benchmarks  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def test_records_cover_table1():
    assert benchmarks.TABLE1 == ["textvqa", "vstar", "docvqa", "pope", "infovqa", "gqa", "realworldqa"]
    got = {n: (b.dataset, b.config, b.split) for n, b in benchmarks.BENCHMARKS.items()}
    assert got["textvqa"] == ("lmms-lab/textvqa", None, "validation")
    assert got["textvqa-boxes"][0] == "jrzhang/TextVQA_GT_bbox"
    assert got["vstar"] == ("craigwu/vstar_bench", None, "test")
    assert got["docvqa"] == ("lmms-lab/DocVQA", "DocVQA", "validation")
    assert got["infovqa"] == ("lmms-lab/DocVQA", "InfographicVQA", "validation")
    assert {got[f"pope-{s}"][2] for s in ("random", "popular", "adversarial")} == {"random", "popular", "adversarial"}
    assert got["gqa"] == ("lmms-lab/GQA", "testdev_balanced_instructions", "testdev")
    assert got["realworldqa"] == ("lmms-lab/RealWorldQA", None, "test")
    for b in benchmarks.BENCHMARKS.values():
        assert b.family in bench.FAMILIES
        assert b.metric in ("vqa_accuracy", "anls", "multiple_choice", "exact_match", "pope", "mc_or_exact")
    assert benchmarks.get("docvqa").prompt == "\nAnswer the question using a single word or phrase."
    with pytest.raises(ValueError, match="unknown benchmark"):
        benchmarks.get("mmmu")


@pytest.mark.parametrize("name", benchmarks.names())
def test_fixture_roundtrip(name, tmp_path):
    b = benchmarks.get(name)
    root = benchmarks.write_fixture(name, tmp_path / name, n=3)
    items = benchmarks.load(name, path=root)
    src = [bench.item(b.family, "test", i, 0) for i in range(3)]
    assert len(items) == 3
    for i, (it, s) in enumerate(zip(items, src)):
        assert it.image.size == s.image.size and it.image.mode == "RGB"
        assert it.family == b.family and it.meta["benchmark"] == name and it.meta["index"] == i
        assert it.question.endswith(b.prompt)
        assert benchmarks.score(name, s.answers[0], it) == 1.0  # the true answer scores 1
        assert benchmarks.score(name, "zzzz qqqq", it) == 0.0
        if b.metric in ("multiple_choice", "mc_or_exact"):
            assert it.options == s.options
            for k, opt in enumerate(it.options):
                assert f"{chr(65 + k)}. {opt}" in it.question
    if name in ("textvqa-boxes", "vstar"):  # evidence boxes come through, as xyxy pixels
        assert [tuple(map(int, bx)) for bx in items[0].boxes] == [tuple(bx) for bx in src[0].boxes]
    # a slice, and a single data file given directly
    assert [it.meta["id"] for it in benchmarks.load(name, path=root, start=1, n=1)] == [items[1].meta["id"]]


def test_single_file_and_missing_path(tmp_path):
    root = benchmarks.write_fixture("docvqa", tmp_path / "d", n=2)
    f = next((root / "DocVQA").glob("validation-*.parquet"))
    assert len(benchmarks.load("docvqa", path=f)) == 2
    with pytest.raises(FileNotFoundError, match="not found"):
        benchmarks.load("docvqa", path=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no data files"):
        benchmarks.load("docvqa", path=tmp_path / "empty")


def test_textvqa_prompt_and_vqa_score(tmp_path):
    root = benchmarks.write_fixture("textvqa", tmp_path / "t", n=1)
    it = benchmarks.load("textvqa", path=root)[0]
    raw = it.meta["raw_question"]
    assert it.question == raw.capitalize() + "\nAnswer the question using a single word or phrase."
    assert len(it.answers) == 10
    assert benchmarks.score("textvqa", it.answers[0].upper() + ".", it) == 1.0


def test_pope_aggregate(tmp_path):
    root = benchmarks.write_fixture("pope-random", tmp_path / "p", n=4)
    items = benchmarks.load("pope-random", path=root)
    preds = [it.answers[0] for it in items]
    agg = benchmarks.aggregate("pope-random", preds, items)
    assert agg["score"] == 1.0 and agg["accuracy"] == 1.0 and agg["n"] == 4


def test_offline_error_names_dataset_and_parameter(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = ("from egg import datasets as benchmarks\n"
            "try:\n    benchmarks.load('docvqa', n=1)\n"
            "except FileNotFoundError as e:\n    print('ERR', e)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = r.stdout
    assert "ERR" in out, r.stderr[-2000:]
    assert "lmms-lab/DocVQA" in out and "DocVQA" in out and "validation" in out
    assert "huggingface-cli download lmms-lab/DocVQA --repo-type dataset" in out
    assert "path=" in out and "--data" in out and "HF_HUB_OFFLINE" in out
