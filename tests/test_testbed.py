"""The testbed checks (egg.testbed) on the random-init reference model and on hand-made rows."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from egg import bench
from egg.synthetic import checks as testbed
from egg.figures.card import plot_card


@pytest.fixture(scope="module")
def rows(vlm):
    return testbed.measure(vlm, families=["text", "doc"], n=3, progress=False)


def test_measure_scores_every_item_and_bounds_chance(vlm, rows):
    assert list(rows.family) == ["text"] * 3 + ["doc"] * 3
    for col in ("base", "oracle", "peak_crop", "random_crop", "box_crop"):
        assert rows[col].between(0, 1).all()
    assert rows.chance.between(0, 1).all() and (rows.chance > 0).all()  # the evidence always covers a cell
    assert rows.max_entropy.tolist() == pytest.approx([math.log(vlm.model.config.get_text_config().vocab_size)] * 6)
    assert (rows.entropy <= rows.max_entropy + 1e-6).all()


def test_a_peak_counts_as_a_hit_within_one_cell_of_the_evidence():
    """Pointing (`near`) and its chance (`hit` at every cell centre) share one rule: the evidence grown
    by one cell's width and height."""
    box = (50.0, 50.0, 60.0, 60.0)
    cell = lambda x, y, w=10.0, h=10.0: (x - w / 2, y - h / 2, x + w / 2, y + h / 2)  # centred on (x, y)
    assert testbed.near(cell(55, 55), [box]) and testbed.near(cell(41, 69), [box])
    assert not testbed.near(cell(39, 55), [box]) and not testbed.near(cell(55, 71), [box])
    assert not testbed.near(cell(39, 55), [(90.0, 90.0, 95.0, 95.0), box])
    assert testbed.near(cell(92, 92), [box, (90.0, 90.0, 95.0, 95.0)])
    wide = cell(0, 0, w=20.0, h=4.0)  # a cell's width and height grow the box apart
    assert testbed.hit(35, 55, wide, [box]) and not testbed.hit(55, 45, wide, [box])


def test_the_base_answer_is_egg_answer_from_the_maps_own_pass(vlm, rows):
    """The base answer continues the key/value cache of the base map's forward: the same
    tokens as a plain ``egg.answer``."""
    import egg

    items = bench.load("text", "test", 3, 0) + bench.load("doc", "test", 3, 0)
    assert rows.base_answer.tolist() == [egg.answer(vlm, it.image, it.question) for it in items]


def test_measure_is_deterministic(vlm, rows):
    again = testbed.measure(vlm, families=["text", "doc"], n=3, progress=False)
    pd.testing.assert_frame_equal(rows, again)


def test_centred_crop_keeps_the_box_centre_and_the_size():
    assert testbed.centred_crop((10, 20, 30, 60), 40, 10) == (0, 35, 40, 45)
    assert testbed.centred_crop((5, 5, 5, 5), 4, 2) == (3, 4, 7, 6)


def _row(family, frac, base, oracle, pointing, multi=False):
    return dict(family=family, index=0, multi_evidence=multi, evidence_fraction=frac, base=base, oracle=oracle,
                entropy=1.0 + base, max_entropy=4.0, pointing=pointing, chance=0.1, peak_crop=oracle,
                random_crop=base, box_crop=oracle, base_answer="", oracle_answer="")


def test_summary_gap_and_acceptance_on_known_rows():
    df = pd.DataFrame([_row(f, 0.01, 0.0, 1.0, True) for f in bench.DETAIL_FAMILIES[:4] for _ in range(10)]
                      + [_row(bench.CONTROL_FAMILY, 0.1, 1.0, 1.0, False) for _ in range(10)])
    s = testbed.summary(df, n_boot=200)
    assert (s.set_index("family").loc[list(bench.DETAIL_FAMILIES[:4]), "gap"] == 1.0).all()
    met = {target: ok for target, ok, _ in testbed.acceptance(s)}
    assert met["oracle - base >= 30 points on >= 4 detail families"]
    assert met["control family: |oracle - base| <= 5 points"]
    assert met["map peak in evidence on >= half of the items, >= 4 detail families"]
    s.loc[s.family == bench.CONTROL_FAMILY, "gap"] = -0.3
    assert not dict((t, ok) for t, ok, _ in testbed.acceptance(s))["control family: |oracle - base| <= 5 points"]


def test_by_evidence_size_splits_single_evidence_items_into_thirds():
    df = pd.DataFrame([_row("text", 0.001 * (i + 1), float(i >= 6), 1.0, i >= 3) for i in range(9)]
                      + [_row("text", 0.5, 1.0, 1.0, True, multi=True)])
    t = testbed.by_evidence_size(df)
    assert list(t["size"].astype(str)) == ["small", "mid", "large"]
    assert list(t.n) == [3, 3, 3]  # the multi-evidence row is left out
    assert list(t.pointing) == [0.0, 1.0, 1.0] and list(t.base) == [0.0, 0.0, 1.0]
    assert t.evidence_pct.tolist() == pytest.approx([0.2, 0.5, 0.8])


def test_by_evidence_size_keeps_a_family_with_fewer_single_items_than_bins():
    # two single-evidence doc items cannot be split into thirds: they are small and mid, not an error
    df = pd.DataFrame([_row("text", 0.001 * (i + 1), 1.0, 1.0, True) for i in range(6)]
                      + [_row("doc", 0.02, 0.0, 1.0, False), _row("doc", 0.01, 1.0, 1.0, True)])
    t = testbed.by_evidence_size(df)
    doc = t[t.family == "doc"]
    assert list(doc["size"].astype(str)) == ["small", "mid"] and list(doc.n) == [1, 1]
    assert list(doc.base) == [1.0, 0.0]  # the smaller item (0.01) is the small one
    assert list(t[t.family == "text"].n) == [2, 2, 2]


def test_plot_card_marks_where_the_curriculum_ends_and_draws_every_condition():
    df = pd.DataFrame([_row(f, 0.01, 0.2, 0.9, i % 2 == 0) for f in ("text", "rwqa") for i in range(6)])
    record = {"loss": [{"step": s, "lm": 1.0 / s, "look": 0.5, "phase": "read" if s <= 30 else "mix"}
                       for s in range(10, 101, 10)]}
    fig = plot_card(testbed.summary(df, n_boot=50), record)
    train, acc, point = fig.axes
    assert [line.get_xdata()[0] for line in train.lines if line.get_linestyle() == ":"] == [30]
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["base", "oracle", "box_crop", "peak_crop",
                                                                   "random_crop"]
    assert len(acc.patches) >= 2 * 5 and len(point.patches) >= 2 * 2  # family x condition bars
    heights = sorted({round(p.get_height(), 6) for p in point.patches if p.get_height() > 0})
    assert heights == [10.0, 50.0]  # in points: chance 10, pointing on half the rows
    assert point.get_ylim() == (0, 100) and "look: -log attention share" in train.get_legend().get_texts()[1].get_text()
    # with the per-item rows, every bar carries its 95% interval
    fig = plot_card(testbed.summary(df, n_boot=50), record, rows=df)
    point = fig.axes[2]
    assert len(point.lines) >= 4 and "95% CI" in point.get_title()


def _method_rows(egg_hits: int, n: int = 40) -> pd.DataFrame:
    """Hand-made rows: base right on 10% of items (pope 70%), oracle on 90%, EGG on `egg_hits` of `n`."""
    rows = []
    for fam in ["text", "vstar", "doc", "info", "pope", "rwqa"]:
        for i in range(n):
            rows.append(dict(family=fam, base=float(i < n // 10), oracle=float(i < 9 * n // 10), crop3x=float(i < 8 * n // 10),
                             egg=float(i < egg_hits), vicrop_rel_att=float(i < n // 5), vicrop_grad_att=float(i < n // 4),
                             vicrop_pure_grad=0.0, egg_box_ratio=4.0 + i % 3, egg_spatial_entropy=float(i % 2),
                             egg_best_index=i % 3, base_answer="yes" if i % 2 else "no",
                             egg_answer="Yes " if i % 4 else "no"))
    df = pd.DataFrame(rows)
    df.loc[df.family == "rwqa", ["base", "oracle"]] = 1.0
    pope = df.family == "pope"
    df.loc[pope, "base"] = (df[pope].index % n < 0.7 * n).astype(float)
    return df


def test_method_acceptance_reads_each_target_from_the_rows():
    good = dict((t, met) for t, met, _ in testbed.method_acceptance(_method_rows(30), n_boot=200))
    assert all(good.values()), good
    bad = testbed.method_acceptance(_method_rows(5), n_boot=200)
    verdict = {t: met for t, met, _ in bad}
    goal = [t for t in verdict if "recovers" in t or "ViCrop" in t]
    assert goal and not any(verdict[t] for t in goal)
    # n is reported with every pooled number
    assert all("n = " in m for t, _, m in bad if t in goal)


def test_method_table_gives_accuracy_and_answer_diversity_per_family():
    t = testbed.method_table(_method_rows(30))
    assert list(t.index) == ["text", "vstar", "doc", "info", "pope", "rwqa"] and (t.n == 40).all()
    assert t.loc["text", "egg"] == pytest.approx(75.0) and t.loc["text", "vicrop_grad_att"] == pytest.approx(25.0)
    assert t.loc["rwqa", "oracle"] == pytest.approx(100.0) and t.loc["pope", "base"] == pytest.approx(70.0)
    assert t.loc["doc", "top base answer"] in ("'yes' (50%)", "'no' (50%)")
    assert t.loc["doc", "top egg answer"] == "'yes' (75%)"  # stripped and lower-cased before counting


def test_gap_recovered_is_the_pooled_share_with_an_interval():
    df = _method_rows(20)
    share, lo, hi = testbed.gap_recovered(df[df.family == "text"], n_boot=300)
    assert share == pytest.approx((20 - 4) / (36 - 4)) and lo < share < hi


def test_gap_recovered_is_undefined_when_the_oracle_may_not_help():
    """Run 11 ignored its crops (oracle = base + 0.6 points on 500 items); its share was printed
    as 0% [-800000000, 200000000]. A gap whose interval reaches 0 gives no share, and the
    target says so."""
    df = _method_rows(20)
    flat = df.assign(oracle=df.base.to_numpy().copy())
    flat.loc[flat.index[0], "oracle"] = 1.0 - flat.loc[flat.index[0], "base"]  # one item apart
    assert all(np.isnan(testbed.gap_recovered(flat, n_boot=300)))
    met, measured = next((m, w) for t, m, w in testbed.method_acceptance(flat, n_boot=300) if t.startswith("EGG recovers"))
    assert met is False and measured.startswith("undefined: the oracle gap")


def test_measure_with_methods_batches_them_as_single_calls_would(vlm):
    """measure(methods=True) runs EGG and ViCrop over 8 items at a time; every row equals the
    one measure_item computes for its item alone."""
    items = bench.load("text", "test", 3, 0, geometry="llava15")
    batched = testbed.measure(vlm, families=["text"], n=3, progress=False, methods=True, geometry="llava15")
    single = pd.DataFrame([testbed.measure_item(vlm, it, methods=True).to_dict() for it in items])
    pd.testing.assert_frame_equal(batched, single)
    assert batched.egg_states.ge(1).all() and batched.vicrop_rel_att.notna().all() and batched.crop3x.notna().all()


def test_a_training_record_has_one_eval_per_step_as_notebook_09_pivots_it():
    """A run whose last periodic eval falls on its final step logs that step twice (the periodic and
    the final eval); `training_record` keeps the final one, so notebook 09 can pivot the evals by
    step for `data/reference-llava15-detail` (it raised on the duplicate)."""
    import json
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "data" / "reference-llava15-detail"
    raw = json.loads((path / "training_log.json").read_text())["eval"]
    ev = testbed.training_record(path)["eval"]
    assert len(raw) > len(ev) and [e["step"] for e in ev] == sorted({e["step"] for e in raw})
    assert ev[-1] == raw[-1]
    table = pd.DataFrame([{"step": e["step"], "family": f, **v} for e in ev for f, v in e.items() if f != "step"])
    assert table.pivot(index="family", columns="step", values=["base", "oracle"]).shape == (7, 2 * len(ev))


def test_training_line_tells_a_finished_run_from_a_mid_run_save():
    record = testbed.training_record()  # the embedded model's, finished
    assert testbed.training_line(record).startswith(f"trained for {record['steps']} steps in ")
    assert record["config"]["look"] == 3 and "trained with a loss on where its answer attends (weight 3)" in (
        testbed.training_line(record))
    taught = {**record, "decoder_stage": {"settings": {"decoder_steps": 2000}, "minutes": 14.6}}
    assert testbed.training_line(taught).endswith("(weight 3); then its decoder alone taught pope's facts at the "
                                                  "full view, tower frozen (2000 steps, 15 min)")
    mid = {"config": {"max_steps": 3500, "model": {}}, "eval": [{"step": 1000}, {"step": 2000}]}
    assert testbed.training_line(mid).startswith("saved at step 2000 of 3500, before its run finished")
    stamped = {**mid, "steps": 3000, "finished": False, "minutes": 90.0}
    assert testbed.training_line(stamped).startswith("saved at step 3000 of 3500")
    assert "attends" not in testbed.training_line(stamped)  # no `look` in its config: no such loss
    assert testbed.training_line({}).startswith("no training record")


def test_within_one_tenth_compares_positions_not_text():
    assert testbed.within_one_tenth("3 7", "4 6") and testbed.within_one_tenth("3 7", "3 7")
    assert not testbed.within_one_tenth("3 7", "5 7") and not testbed.within_one_tenth("3", "3 7")
    assert testbed.within_one_tenth("top left", "top left") and not testbed.within_one_tenth("top left", "top right")
    assert not testbed.within_one_tenth("z", "3 7")


def test_locating_asks_every_position_fact_with_its_true_position(vlm):
    """One row per answerless fact of each item; the truth is where the fact's box is."""
    from egg.reference.data import position_words

    rows = testbed.locating(vlm, families=["text", "vstar"], n=2, seed=3)
    items = [it for f in ["text", "vstar"] for it in bench.load(f, "val", 2, 3)]
    expected = [(q, position_words(b, it.image.size)) for it in items for q, a, b in it.facts if a is None]
    assert len(rows) == len(expected) > 0
    assert list(zip(rows.question, rows.truth)) == expected
    assert (rows.near | ~rows.exact).all()  # an exact answer is also within one tenth


def test_object_cells_are_the_cells_whose_centre_a_box_holds():
    mask = testbed.object_cells([(0, 0, 50, 50)], (4, 4), (100, 100))
    assert mask.sum() == 4 and mask[:2, :2].all()
    tiny = testbed.object_cells([(60, 60, 61, 61)], (4, 4), (100, 100))  # holds no cell centre
    assert tiny.sum() == 1 and tiny[2, 2]
    wide = testbed.object_cells([(0, 0, 50, 50), (60, 60, 61, 61)], (4, 4), (200, 100))  # x scaled
    assert wide.sum() == 3 and wide[0, 0] and wide[1, 0] and wide[2, 1]


def test_binding_peak_agrees_with_pointing_and_counts_the_other_objects(vlm, rows):
    """A peak on the named object is exactly what `measure` counts as pointing; the other
    objects are the item's answerless facts not at an evidence box."""
    b = testbed.binding(vlm, families=["text", "doc", "pope"], n=3, split="test", seed=0)  # pope: no named object
    assert b.peak.isin(["named", "other", "none"]).all()
    assert (b.peak == "named").tolist() == rows.pointing.tolist()
    items = bench.load("text", "test", 3, 0) + bench.load("doc", "test", 3, 0)
    assert b.others.tolist() == [sum(a is None and tuple(x) not in map(tuple, it.boxes) for _, a, x in it.facts)
                                 for it in items]
    assert (b.others > 0).all() and (b.named_ratio > 0).all() and (b.other_ratio > 0).all()


def test_binding_reads_a_vicrop_map_when_asked(vlm):
    """`maps` swaps the entropy-gradient map for a ViCrop variant's: the ratios are that map's."""
    from egg.baselines import vicrop_map

    b = testbed.binding(vlm, families=["text"], n=2, split="test", seed=0, maps="grad-att")
    for item, ratio in zip(bench.load("text", "test", 2, 0), b.named_ratio):
        m = vicrop_map(vlm, item.image, item.question, variant="grad-att")[0]
        assert ratio == pytest.approx(m[testbed.object_cells(item.boxes, m.shape, item.image.size)].mean() / m.mean())
    assert b.peak.isin(["named", "other", "none"]).all()
    with pytest.raises(ValueError, match="maps must be 'egg' or a ViCrop variant"):
        testbed.binding(vlm, maps="attention")


def test_binding_summary_counts_peaks_per_family_against_picking_an_object_at_random():
    df = pd.DataFrame({"family": ["text"] * 4 + ["doc"] * 2, "index": range(6), "others": [1, 1, 3, 3, 4, 4],
                       "peak": ["named", "other", "other", "none", "named", "named"],
                       "named_ratio": [4.0, 1.0, 2.0, 3.0, 5.0, 7.0], "other_ratio": [1.0, 2.0, 3.0, 4.0, 1.0, 1.0]})
    s = testbed.binding_summary(df, n_boot=200).set_index("family")
    assert s.loc["text", ["n", "named", "other", "none"]].tolist() == [4, 0.25, 0.5, 0.25]
    assert s.loc["text", "by_kind"] == pytest.approx(1 / 3)  # of the three peaks on an object, one is the named
    assert s.loc["text", "kind_chance"] == pytest.approx((0.5 + 0.5 + 0.25 + 0.25) / 4)
    assert s.loc["text", "named_lo"] <= 0.25 <= s.loc["text", "named_hi"]
    assert s.loc["doc", ["named", "by_kind", "named_ratio", "other_ratio"]].tolist() == [1.0, 1.0, 6.0, 1.0]
