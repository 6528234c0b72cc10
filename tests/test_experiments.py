"""egg.experiments / egg.plots: running, resuming, tables, verdicts, files.

Runs use the random-init reference model fixture (``vlm`` in conftest.py), so nothing here
needs data/; tables and verdicts are checked on hand-built records with known numbers.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from egg import bench, metrics
from egg import runs as ex
from egg.figures import results as plots

# --------------------------------------------------------------------------- hand-built records


def rec(family, index, variant, score, *, iou=math.nan, pointing=math.nan, cost_fe=1.0, n_evidence=1,
        evidence_fraction=0.005, prediction=None, answers=None, iterations=0, boxes=None, recall=math.nan):
    return ex.Record(
        family=family, index=index, method=variant.split(" ")[0], params={}, variant=variant,
        prediction=prediction if prediction is not None else ("yes" if score >= 0.5 else "no"),
        score=float(score), correct=bool(score >= 0.5), boxes=boxes if boxes is not None else [],
        gt_boxes=[[0, 0, 1, 1]] * n_evidence, iou=iou, pointing=pointing, evidence_recall=recall,
        evidence_fraction=evidence_fraction, n_evidence=n_evidence, forward=int(cost_fe), cost_fe=float(cost_fe),
        iterations=iterations, answers=answers if answers is not None else ["yes"],
    )


def frame(rows):
    return ex.records_frame(rows)


def paired_scores(family, n, base_correct, method_correct, method="egg", start=0):
    """n items; base correct on the first base_correct, method on the first method_correct."""
    rows = []
    for i in range(n):
        rows.append(rec(family, start + i, "base", 1.0 if i < base_correct else 0.0))
        rows.append(rec(family, start + i, method, 1.0 if i < method_correct else 0.0))
    return rows


# --------------------------------------------------------------------------- running (tiny model)


@pytest.mark.slow
def test_run_every_method_on_every_family(vlm):
    df = ex.run(vlm, ex.MAIN_METHODS, families=None, n=1, progress=False)
    assert len(df) == len(bench.families()) * len(ex.MAIN_METHODS)
    assert list(df["family"].unique()) == bench.families()
    assert list(df["variant"].unique()) == ex.MAIN_METHODS
    assert df["score"].between(0, 1).all()
    assert (df["correct"] == (df["score"] >= 0.5)).all()
    assert (df["cost_fe"] == ex.FE_FORWARD * df["forward"] + ex.FE_BACKWARD * df["backward"]).all()
    assert (df["forward"] >= 1).all()
    base = df[df["variant"] == "base"]
    assert base["iou"].isna().all() and (base["boxes"].map(len) == 0).all() and (base["backward"] == 0).all()
    boxed = df[df["variant"] != "base"]
    assert boxed["iou"].between(0, 1).all() and boxed["pointing"].isin([0.0, 1.0]).all()
    oracle = df[df["variant"] == "oracle"]
    assert (oracle["iou"] > 0).all()  # croppable versions of the gt boxes overlap them
    egg_rows = df[df["variant"] == "egg"]
    assert egg_rows["entropy"].notna().all() and (egg_rows["backward"] >= 1).all()
    assert (df["model"].str.len() > 0).all() and df["key"].is_unique


def test_run_on_a_real_benchmark_uses_its_metric_and_skips_bounds_without_boxes(vlm, tmp_path):
    """Notebook 02's path for real benchmarks: rows named by the benchmark, scored with its
    official metric; the oracle / random bounds need boxes, which plain TextVQA lacks."""
    from egg import datasets as benchmarks

    roots = {name: benchmarks.write_fixture(name, tmp_path / name, n=2) for name in ("textvqa", "textvqa-boxes")}
    with pytest.warns(UserWarning, match="oracle on textvqa"):
        df = ex.run(vlm, ["base", "oracle"], ["textvqa", "textvqa-boxes"], n=5, data=roots, progress=False)
    assert list(df["family"].unique()) == ["textvqa", "textvqa-boxes"]
    assert len(df) == 2 + 2 * 2  # n capped at the fixtures' 2 items; no oracle rows on textvqa
    for _, r in df.iterrows():
        expect = benchmarks.score(r["family"], r["prediction"], benchmarks.load(r["family"], path=roots[r["family"]])[r["index"]])
        assert r["score"] == pytest.approx(expect)
    assert ex.family_of("textvqa") == "text" and ex.family_of("doc") == "doc"
    with pytest.raises(ValueError, match="unknown family or benchmark 'nope'"):
        ex.run(vlm, ["base"], ["nope"], n=1, progress=False)


def test_random_boxes_match_gt_sizes_and_are_seeded_per_item(vlm):
    a = ex.run(vlm, ["random"], ["text", "vstar"], n=2, progress=False)
    b = ex.run(vlm, ["random"], ["text", "vstar"], n=2, progress=False)
    assert list(a["boxes"]) == list(b["boxes"])
    for r in a.itertuples():
        for box, gt in zip(r.boxes, r.gt_boxes):
            assert box[2] - box[0] >= min(gt[2] - gt[0], 1) and box[3] - box[1] >= min(gt[3] - gt[1], 1)
    firsts = [tuple(bx[0]) for bx in a["boxes"]]
    assert len(set(firsts)) == len(firsts)  # different items, different positions


def test_resume_skips_done_records_and_duplicates_none(vlm, tmp_path, monkeypatch):
    path = tmp_path / "records.jsonl"
    methods = {"base": "base", "egg N=1": ("egg", {"stopping": "fixed", "fixed_n": 1})}
    full = ex.run(vlm, methods, ["text", "pope"], n=2, path=path, progress=False, batch_size=1)
    lines = path.read_text().splitlines()
    assert len(lines) == 8 and len({json.loads(x)["key"] for x in lines}) == 8

    # an interrupted run: 3 complete records and half of the 4th
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    calls = []

    def counting(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            calls.append(name)
            return fn(*a, **k)
        return wrapper

    for name, fn in dict(ex.METHODS).items():
        monkeypatch.setitem(ex.METHODS, name, counting(name, fn))
    resumed = ex.run(vlm, methods, ["text", "pope"], n=2, path=path, progress=False, batch_size=1)
    assert len(calls) == 5  # only the 5 missing records were computed
    keys = [json.loads(x)["key"] for x in path.read_text().splitlines() if x.strip().endswith("}")]
    assert len(keys) == len(set(keys)) == 8
    cols = ["family", "index", "variant", "prediction", "score", "boxes", "cost_fe"]
    pd.testing.assert_frame_equal(resumed[cols], full[cols])

    calls.clear()
    again = ex.run(vlm, methods, ["text", "pope"], n=2, path=path, progress=False, batch_size=1)
    assert calls == [] and len(again) == 8
    assert len(ex.load_records(path)) == 8


def test_same_configuration_under_two_labels_is_computed_once(vlm, tmp_path):
    path = tmp_path / "r.jsonl"
    df = ex.run(vlm, {"egg": "egg", "paper": ("egg", {"k": 2})}, ["text"], n=1, path=path, progress=False)
    assert list(df["variant"]) == ["egg", "paper"]
    assert df["key"].nunique() == 1 and len(ex.load_records(path)) == 1


def test_options_are_canonical_and_checked():
    assert ex.effective_options("egg", {}) == ex.effective_options("egg", {"k": 2})
    assert ex.effective_options("egg", {"k": 1}) != ex.effective_options("egg", {})
    with pytest.raises(TypeError, match="no option"):
        ex.effective_options("egg", {"kk": 1})
    with pytest.raises(ValueError, match="unknown method"):
        ex.effective_options("nope")
    with pytest.raises(ValueError, match="duplicate"):
        ex.make_specs(["egg", "egg"])


def test_record_json_roundtrip_keeps_nan_and_skips_corrupt_lines(tmp_path):
    r = rec("text", 0, "base", 0.3)
    back = ex.Record.from_json(r.to_json())
    assert math.isnan(back.iou) and back.score == 0.3 and back.variant == "base"
    p = tmp_path / "x.jsonl"
    ex.save_records([r, rec("text", 1, "egg", 1.0)], p)
    with open(p, "a") as f:
        f.write('{"family": "te')
    assert [x.index for x in ex.load_records(p)] == [0, 1]
    assert ex.load_records(tmp_path / "missing.jsonl") == []


# --------------------------------------------------------------------------- tables


def test_accuracy_table_with_pope_f1():
    rows = [rec("text", i, "base", s) for i, s in enumerate([1.0, 0.0, 0.5, 0.5])]
    preds, labels = ["yes", "no", "yes", "yes"], ["yes", "yes", "no", "yes"]
    rows += [rec("pope", i, "base", float(p == l), prediction=p, answers=[l]) for i, (p, l) in
             enumerate(zip(preds, labels))]
    t = ex.accuracy_table(frame(rows))
    assert t.loc["base", "text"] == pytest.approx(50.0)
    assert t.loc["base", "pope"] == pytest.approx(50.0)
    assert t.loc["base", "pope F1"] == pytest.approx(metrics.pope(preds, labels)["f1"] * 100)


def test_delta_table_numbers():
    df = frame(paired_scores("text", 20, 5, 15))
    dt = ex.delta_table(df)
    row = dt[(dt["method"] == "egg") & (dt["family"] == "text")].iloc[0]
    assert row["n"] == 20 and row["base"] == pytest.approx(25.0) and row["accuracy"] == pytest.approx(75.0)
    assert row["delta"] == pytest.approx(50.0) and row["ci_lo"] > 0 and row["ci_hi"] <= 100
    assert row["p_mcnemar"] == pytest.approx(2 * 0.5 ** 10)  # 10 discordant, all one way
    s = ex.delta_summary(dt)
    assert s.loc["egg", "text"].startswith("+50.0 [")


def test_localisation_table_buckets():
    rows = [rec("text", 0, "egg", 1, iou=0.5, pointing=1.0, evidence_fraction=0.001),
            rec("text", 1, "egg", 1, iou=0.1, pointing=0.0, evidence_fraction=0.005),
            rec("text", 2, "egg", 1, iou=0.3, pointing=1.0, evidence_fraction=0.05),
            rec("text", 0, "base", 1)]
    t = ex.localisation_table(frame(rows))
    assert set(t["method"]) == {"egg"}  # base has no boxes
    got = dict(zip(t["bucket"], t["iou"]))
    assert got == pytest.approx({"small": 50.0, "medium": 10.0, "large": 30.0, "all": 30.0})
    assert [ex.size_bucket(f) for f in (0.0, 0.0029, 0.003, 0.0099, 0.01, 0.5)] == \
        ["small", "small", "medium", "medium", "large", "large"]
    assert "small < 0.3 %" in ex.bucket_legend()


def test_cost_table_and_pareto():
    rows = [rec("text", i, "base", 1, cost_fe=1) for i in range(3)] + \
           [rec("text", i, "egg", 1, cost_fe=5, iterations=2) for i in range(3)]
    t = ex.cost_table(frame(rows))
    assert t.loc["egg", "cost_fe"] == 5 and t.loc["egg", "fe_vs_base"] == 5 and "seconds" not in t
    assert "seconds" in ex.cost_table(frame(rows), seconds=True)
    assert ex.pareto_front([50, 60, 55, 60], [1, 2, 3, 2]) == [True, True, False, True]


# --------------------------------------------------------------------------- verdicts


def _c1_frame(detail_gain, control_base, control_method, n=30):
    rows = []
    for j, f in enumerate(["text", "vstar"]):
        rows += paired_scores(f, n, 5, 5 + detail_gain)
    rows += paired_scores("rwqa", n, control_base, control_method)
    return frame(rows)


def test_verdict_c1_supported_not_supported_inconclusive():
    v = ex.verdict_c1(_c1_frame(10, 10, 10))
    assert v.status == "supported" and v.sentence.startswith("C1 supported:")
    assert "+33.3 points" in v.sentence and "about neutral" in v.sentence

    v = ex.verdict_c1(_c1_frame(-4, 10, 10))
    assert v.status == "not supported" and v.sentence.startswith("C1 not supported:")
    assert "-13.3 points" in v.sentence

    v = ex.verdict_c1(_c1_frame(10, 5, 25))  # clearly non-neutral on the control
    assert v.status == "not supported" and "not neutral" in v.sentence
    v = ex.verdict_c1(_c1_frame(10, 1, 0))  # control: -3.3 points, CI [-10.0, +0.0] only touches 0
    assert v.status == "not supported" and "-3.3 points [-10.0, +0.0]" in v.sentence and "not neutral" in v.sentence

    v = ex.verdict_c1(_c1_frame(1, 10, 10))  # +1 item per family: CI includes 0
    assert v.status == "inconclusive" and v.sentence.startswith("C1 inconclusive:")


def test_verdict_c2():
    rows = []
    for i in range(30):
        rows.append(rec("text", i, "egg", 1, iou=0.6 + 0.01 * (i % 3), pointing=1.0))
        rows.append(rec("text", i, "vicrop-rel-att", 1, iou=0.1, pointing=0.0))
    v = ex.verdict_c2(frame(rows))
    assert v.status == "supported" and v.sentence.startswith("C2 supported:")
    rows = [r for r in rows] + [rec("text", i, "vicrop-grad-att", 1, iou=0.9, pointing=1.0) for i in range(30)]
    v = ex.verdict_c2(frame(rows))
    assert v.status == "not supported" and "vicrop-grad-att: IoU -2" in v.sentence
    assert "attention" not in v.sentence
    named = ex.verdict_c2(frame(rows), attention_loss=3.0)  # a model trained to attend: the verdict says so
    assert named.status == v.status and named.sentence.startswith(v.sentence)
    assert "loss pulling its answer's attention onto the named object (weight 3)" in named.sentence


def test_trained_attention_reads_the_record_beside_the_weights(tmp_path):
    """The embedded model's record gives its `look` weight; a model without a record (a hub id) 0."""
    from types import SimpleNamespace

    from egg.api import REFERENCE_DIR

    look = json.loads((REFERENCE_DIR / "training_log.json").read_text())["config"]["look"]
    assert look > 0 and ex.trained_attention(SimpleNamespace(source=str(REFERENCE_DIR))) == look
    assert ex.trained_attention(SimpleNamespace(source="llava-hf/llava-1.5-7b-hf")) == 0.0
    (tmp_path / "training_log.json").write_text(json.dumps({"config": {"look": 0.0}}))
    assert ex.trained_attention(SimpleNamespace(source=str(tmp_path))) == 0.0


def test_verdict_c3():
    def rules(acc_cost):
        rows = []
        for name, (correct, cost) in acc_cost.items():
            rows += [rec("text", i, name, float(i < correct), cost_fe=cost) for i in range(40)]
        return frame(rows)

    df = rules({"spatial-entropy": (30, 5), "fixed N=1": (20, 4), "fixed N=4": (31, 13)})
    v = ex.verdict_c3(df)
    assert v.status == "supported" and "75.0 points at 5.00 FE" in v.sentence
    df = rules({"spatial-entropy": (20, 5), "fixed N=1": (30, 4)})
    v = ex.verdict_c3(df)
    assert v.status == "not supported" and "dominated by fixed N=1" in v.sentence
    df = rules({"spatial-entropy": (10, 5), "fixed N=4": (38, 13)})
    assert ex.verdict_c3(df).status == "inconclusive"


def test_verdict_c4_and_ablation_configs():
    configs, axes = ex.ablation_configs(num_layers=32)
    assert configs["default"] == ("egg", {})
    assert axes["num_layers"] == [(8, "num_layers=8"), (16, "num_layers=16"), (24, "num_layers=24"),
                                  ("all", "default")]
    assert ("default" not in [lab for _, lab in axes["k"] if _ != 2])
    assert ex.layer_values(4) == [1, 2, 3, "all"]

    def table_for(best):
        rows = []
        for label, correct in best.items():
            rows += [rec("text", i, label, float(i < correct)) for i in range(40)]
        return frame(rows)

    small_axes = {"token_index": [(1, "default"), (2, "token_index=2")],
                  "num_layers": [(16, "num_layers=16"), ("all", "default")], "k": [(1, "k=1"), (2, "default")]}
    df = table_for({"default": 30, "token_index=2": 20, "num_layers=16": 25, "k=1": 10})
    v = ex.verdict_c4(ex.ablation_table(df, small_axes), df)
    assert v.status == "supported" and v.sentence.startswith("C4 supported:")
    df = table_for({"default": 10, "token_index=2": 30, "num_layers=16": 5, "k=1": 5})
    v = ex.verdict_c4(ex.ablation_table(df, small_axes), df)
    assert v.status == "not supported" and "token_index: 2 beats the paper's 1" in v.sentence
    df = table_for({"default": 20, "token_index=2": 20, "num_layers=16": 20, "k=1": 20})
    v = ex.verdict_c4(ex.ablation_table(df, small_axes), df)
    assert v.status == "inconclusive" and "k: 2 tied for best with 1 (50.0)" in v.sentence


def test_multi_evidence_table_and_verdict():
    rows = []
    for i in range(30):
        two = i % 2 == 0
        ne = 2 if two else 1
        rows.append(rec("info", i, "egg k=1", float(i < 10), n_evidence=ne, recall=0.5 if two else 1.0,
                        boxes=[[0, 0, 1, 1]]))
        rows.append(rec("info", i, "egg k=2", float(two or i < 10), n_evidence=ne, recall=1.0,
                        boxes=[[0, 0, 1, 1]] * 2))
    df = frame(rows)
    t = ex.multi_evidence_table(df)
    assert list(t["evidence"].unique()) == ["one box", "two boxes"]
    assert t[(t["evidence"] == "two boxes") & (t["method"] == "egg k=2")]["accuracy"].iloc[0] == 100.0
    v = ex.verdict_multi(df)
    assert v.status == "supported" and "two-box questions = +66.7 points" in v.sentence


# --------------------------------------------------------------------------- files and figures


def test_save_table_writes_csv_and_markdown(tmp_path):
    t = pd.DataFrame({"a": [1.234, math.nan], "b": ["x|y", "z"]}, index=pd.Index(["r1", "r2"], name="m"))
    csv, md = ex.save_table(t, "t", tmp_path)
    assert pd.read_csv(csv, index_col=0).shape == (2, 2)
    text = md.read_text()
    assert text.splitlines()[0] == "| m | a | b |" and "| r1 | 1.23 | x\\|y |" in text and "| r2 |  | z |" in text


def test_figures_and_byte_stable_files(tmp_path):
    rows = []
    for i in range(6):
        for v, s, io in (("base", i % 2, math.nan), ("egg", 1, 0.4), ("vicrop-rel-att", 0, 0.1)):
            rows.append(rec("text" if i < 3 else "rwqa", i, v, float(s), iou=io,
                            pointing=math.nan if math.isnan(io) else 1.0, evidence_fraction=0.002 * (i + 1)))
    df = frame(rows)
    figs = {"main": plots.main_results(df), "loc": plots.localisation(df, ["egg", "vicrop-rel-att"])}
    st = ex.stopping_table(df, ["egg", "vicrop-rel-att"])
    figs["stop"] = plots.cost_accuracy(st, ex.reference_point(df, "base"))
    configs, axes = ex.ablation_configs(num_layers=4)
    abl = ex.ablation_table(df.assign(variant=df["variant"].replace({"egg": "default", "base": "k=1"})), axes)
    figs["abl"] = plots.ablations(abl)
    for ax in figs["abl"].axes:  # every visible panel spans at least +-2 points, flat ones included
        if ax.get_visible():
            lo, hi = ax.get_ylim()
            assert lo <= -2.0 and hi >= 2.0
    figs["multi"] = plots.multi_evidence(df)
    from matplotlib.figure import Figure

    for name, fig in figs.items():
        assert isinstance(fig, Figure)
        png, pdf = map(Path, plots.save_figure(fig, name, tmp_path / "a", dpi=40))
        png2, pdf2 = map(Path, plots.save_figure(fig, name, tmp_path / "b", dpi=40))
        assert png.read_bytes() == png2.read_bytes() and pdf.read_bytes() == pdf2.read_bytes()
        assert pdf.read_bytes()[:4] == b"%PDF" and png.read_bytes()[:4] == b"\x89PNG"


def test_resolve_dir_is_relative_to_the_repo(tmp_path):
    assert ex.resolve_dir("figures", create=False) == ex.REPO_ROOT / "figures"
    assert ex.resolve_dir(tmp_path / "x") == tmp_path / "x" and (tmp_path / "x").is_dir()
    assert ex.results_path(tmp_path).name == "records.jsonl"


def test_headline_pools_the_detail_families_and_states_n():
    rows = []
    for fam in ("text", "doc", "rwqa"):
        for i in range(10):
            rows.append(dict(family=fam, index=i, variant="base", score=float(i < 2), correct=i < 2))
            rows.append(dict(family=fam, index=i, variant="egg", score=float(i < 5), correct=i < 5))
    table = ex.headline(pd.DataFrame(rows))
    lines = table.splitlines()
    assert lines[2] == "| base | 20.0 | | |"
    assert lines[3].startswith("| egg | 50.0 | +30.0 points [") and "rwqa" not in table
    assert lines[-1] == "n = 20 paired items: text 10, doc 10 (the detail-critical families, pooled)."
