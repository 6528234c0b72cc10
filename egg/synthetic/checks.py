"""Does the testbed support grounding at all? The checks to run before any accuracy table.

For each test item (docs/method.md section 8, lessons 3 and 4):

- base: the answer from the full image alone; oracle: with crops at the ground-truth boxes;
- the next-token entropy of the base answer, against its maximum log|V|;
- pointing: the first entropy-gradient map (answer token's entropy, gradient w.r.t. the full
  image's visual tokens, L2 per token) smoothed, and whether its peak cell lies in a
  ground-truth box or within one cell of it; chance = the area fraction that counts as a hit;
- peak crop vs random crop: append a crop of 2 x 2 grid cells centred on that peak, or a
  crop of the same size at a random place, and score both answers;
- box crop: a crop of the same size centred on the (first) evidence box, what a perfect peak
  would give: it separates a map that points wrong from a zoom too weak to read the detail;
- with ``methods=True``: reading at a loose zoom, crops 3 x each evidence box's side centred on
  it (`crop3x`), against the oracle's tight crops (real VLMs read a detail in a crop several
  times its box); and the method itself at its defaults (``egg.ground``) with the three ViCrop
  variants: EGG's score, its first box's area over the evidence's, the spatial entropy of its
  first map and the state its rule chose; each ViCrop variant's score.

`measure` returns one row per item; `summary` aggregates per family with bootstrap CIs;
`by_evidence_size` splits each family by the size of its evidence.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import synthetic as bench
from ..adapters import EmbeddingCache, as_adapter
from ..baselines import VARIANTS, vicrop_batch, vicrop_map
from ..method.boxes import box_center, clamp_aspect, grid_box_to_pixels, point_in_box
from ..method.regions import first_argmax_2d, smooth
from ..method.relevance import relevance
from ..method.zoom import answer_with_crops
from ..outputs import progress_line
from ..stats import bootstrap_ci, paired_bootstrap


#: Families whose question names one object among others of its kind (a colour picks the sign).
NAMED_FAMILIES = ("text", "vstar", "doc", "info")


@dataclass
class TestbedRow:
    family: str
    index: int
    multi_evidence: bool
    evidence_fraction: float
    base: float
    oracle: float
    entropy: float
    max_entropy: float
    pointing: bool
    chance: float
    peak_crop: float
    random_crop: float
    box_crop: float
    base_answer: str
    oracle_answer: str
    crop3x: float = math.nan
    egg: float = math.nan
    egg_box_ratio: float = math.nan
    egg_spatial_entropy: float = math.nan
    egg_best_index: int = -1
    egg_states: int = 0
    egg_answer: str = ""
    vicrop_rel_att: float = math.nan
    vicrop_grad_att: float = math.nan
    vicrop_pure_grad: float = math.nan

    def to_dict(self) -> dict:
        return asdict(self)


def peak_cell(raw, grid, sigma: float):
    """The smoothed map's first maximum, as the pixel box of its grid cell."""
    r, c = first_argmax_2d(smooth(raw, sigma))
    return grid_box_to_pixels((c, r, c + 1, r + 1), grid.shape, grid.footprint)


def hit(x: float, y: float, cell, boxes) -> bool:
    """Whether (x, y) lies in one of `boxes` grown by one of `cell`'s sizes on every side."""
    return any(point_in_box((x, y), b, (cell[2] - cell[0], cell[3] - cell[1])) for b in boxes)


def near(cell, boxes) -> bool:
    """Whether `cell`'s centre lies in one of `boxes` or within one cell of it (pointing's hit)."""
    return hit(*box_center(cell), cell, boxes)


def centred_crop(box, w: float, h: float) -> tuple[float, float, float, float]:
    """A w x h crop centred on `box` (a point is a box of zero size); clamped later, by the caller."""
    cx, cy = box_center(box)
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def loose_crop(box, factor: float) -> tuple[float, float, float, float]:
    """A square crop `factor` x `box`'s longer side, centred on it."""
    side = factor * max(box[2] - box[0], box[3] - box[1])
    return centred_crop(box, side, side)


def measure_item(vlm, item: bench.Item, sigma: float = 1.0, seed: int = 0, methods: bool = False,
                 fields: dict | None = None, cache: EmbeddingCache | None = None) -> TestbedRow:
    """All testbed diagnostics for one item (the methods' too with `methods`, module docstring;
    `fields`: the item's `method_fields` when a batch computed them already; `cache`: the one
    they encoded the item's image into)."""
    adapter = as_adapter(vlm)
    img, q = item.image, item.question
    W, H = img.size
    cache = cache if cache is not None else EmbeddingCache()  # the full image is encoded once for every question
    prep = adapter.prepare([img], q, cache=cache)
    res = relevance(adapter, prep, cache=cache, keep_kv=True)  # its pass is also the base answer's prefill
    grid = prep.grids[0]
    rows, cols = grid.shape
    cell = peak_cell(res.maps[0], grid, sigma)
    cw, ch = cell[2] - cell[0], cell[3] - cell[1]
    pointing = near(cell, item.boxes)  # chance: the share of cell centres that would be a hit
    centres = [((j + 0.5) * W / cols, (i + 0.5) * H / rows) for i in range(rows) for j in range(cols)]
    chance = float(np.mean([hit(x, y, cell, item.boxes) for x, y in centres]))

    def ask(crops) -> str:
        crops = [clamp_aspect(b, (W, H), min_side=adapter.min_crop_side) for b in crops]
        return answer_with_crops(adapter, img, q, crops, cache=cache)

    base_answer = adapter.generate(prep, cache=cache, kv=res.kv)
    oracle_answer = ask(item.boxes)
    pw, ph = min(2 * cw, W), min(2 * ch, H)  # peak, random and box crops share this size
    peak = centred_crop(cell, pw, ph)
    rng = np.random.default_rng([seed, int(item.meta.get("index", 0))])
    x0, y0 = rng.uniform(0, W - pw), rng.uniform(0, H - ph)
    peak_answer, random_answer = ask([peak]), ask([(x0, y0, x0 + pw, y0 + ph)])
    box_answer = ask([centred_crop(item.boxes[0], pw, ph)])
    score = lambda a: bench.score(item.family, a, item)
    extra = {}
    if methods:
        extra = {"crop3x": score(ask([loose_crop(b, 3.0) for b in item.boxes])),
                 **(fields if fields is not None else method_fields(vlm, [item], caches=[cache])[0])}
    return TestbedRow(
        family=item.family, index=int(item.meta.get("index", -1)), multi_evidence=item.multi_evidence,
        evidence_fraction=item.evidence_fraction, base=score(base_answer), oracle=score(oracle_answer),
        entropy=res.entropy, max_entropy=math.log(adapter.model.config.get_text_config().vocab_size),
        pointing=bool(pointing), chance=chance, peak_crop=score(peak_answer), random_crop=score(random_answer),
        box_crop=score(box_answer),
        base_answer=base_answer, oracle_answer=oracle_answer, **extra,
    )


def method_fields(vlm, items: list[bench.Item], batch_size: int = 8, caches: list | None = None) -> list[dict]:
    """EGG at the paper's defaults and the three ViCrop variants on each item, `batch_size`
    questions per model pass (each result equals the single call's, egg.ground_batch); each
    item's image is encoded once for all four, into its entry of `caches` if given."""
    from ..method.batch import ground_batch
    from ..method.boxes import box_area

    images, questions = [it.image for it in items], [it.question for it in items]
    caches = caches if caches is not None else [EmbeddingCache() for _ in items]
    out = []
    for it, g in zip(items, ground_batch(vlm, images, questions, batch_size=batch_size, caches=caches)):
        first = g.trace[0].boxes[0] if g.trace[0].boxes else None
        evidence = float(np.mean([box_area(b) for b in it.boxes]))
        out.append({"egg": bench.score(it.family, g.answer, it), "egg_answer": g.answer,
                    "egg_best_index": int(g.best_index), "egg_states": len(g.trace),
                    "egg_spatial_entropy": float(g.trace[0].spatial_entropy),
                    "egg_box_ratio": box_area(first) / evidence if first is not None else math.nan})
    for v in VARIANTS:
        for it, row, g in zip(items, out, vicrop_batch(vlm, images, questions, variant=v, batch_size=batch_size,
                                                       caches=caches)):
            row["vicrop_" + v.replace("-", "_")] = bench.score(it.family, g.answer, it)
    return out


def measure(vlm, families=None, n: int = 300, split: str = "test", seed: int = 0, progress: bool = True,
            methods: bool = False, geometry: str | None = None):
    """One TestbedRow per item, as a DataFrame; items drawn in `geometry` (egg.synthetic.Geometry;
    None: the model's own, ``bench.geometry_for``)."""
    from tqdm import tqdm  # the plain bar on stderr: tqdm.auto would draw a widget into a notebook

    families = families or bench.families()
    geometry = geometry or bench.geometry_for(vlm)
    rows = []
    chunk = 8 if methods else 1  # the methods run batched over this many items
    for fam in families:
        items = bench.load(fam, split, n, seed, geometry=geometry)
        with tqdm(total=len(items), desc=fam, disable=not progress, leave=False) as bar:
            for k in range(0, len(items), chunk):
                part = items[k:k + chunk]
                caches = [EmbeddingCache() for _ in part]
                fields = method_fields(vlm, part, chunk, caches) if methods else [None] * len(part)
                for item, f, c in zip(part, fields, caches):
                    rows.append(measure_item(vlm, item, seed=seed, methods=methods, fields=f, cache=c).to_dict())
                bar.update(len(part))
        progress_line(f"testbed: {fam} done, {len(rows)} items so far")
    return pd.DataFrame(rows)


def summary(df, n_boot: int = 2000, seed: int = 0):
    """Per family: accuracies with 95% bootstrap CIs, the oracle gap, entropy, pointing vs chance."""
    out = []
    for fam, g in df.groupby("family", sort=False):
        gap, glo, ghi = paired_bootstrap(g.base.values, g.oracle.values, n_boot=n_boot, seed=seed)
        crop, clo, chi = paired_bootstrap(g.random_crop.values, g.peak_crop.values, n_boot=n_boot, seed=seed)
        p, plo, phi = bootstrap_ci(g.pointing.values.astype(float), n_boot=n_boot, seed=seed)
        right, wrong = g.entropy[g.base >= 0.5], g.entropy[g.base < 0.5]
        out.append({
            "family": fam, "n": len(g), "base": g.base.mean(), "oracle": g.oracle.mean(),
            "gap": gap, "gap_lo": glo, "gap_hi": ghi,
            "H_right": right.mean() if len(right) else float("nan"),
            "H_wrong": wrong.mean() if len(wrong) else float("nan"),
            "H_max": g.max_entropy.iloc[0],
            "pointing": p, "pointing_lo": plo, "pointing_hi": phi, "chance": g.chance.mean(),
            "peak_crop": g.peak_crop.mean(), "random_crop": g.random_crop.mean(),
            "peak_minus_random": crop, "pmr_lo": clo, "pmr_hi": chi,
            "box_crop": g.box_crop.mean(), "box_minus_random": (g.box_crop - g.random_crop).mean(),
        })
    return pd.DataFrame(out)


def _quantile_labels(x, labels):
    """`labels` by rank quantile of `x`, ties broken by order; fewer items than labels (qcut cannot
    split them) take the first labels, in rank order."""
    r = x.rank(method="first")
    few = len(x) < len(labels)
    return r.map(lambda k: labels[int(k) - 1]) if few else pd.qcut(r, len(labels), labels=labels).astype(str)


def by_evidence_size(df, bins: int = 3):
    """Per family and evidence-size tercile (single-evidence items, so that the size is one
    object's): where does the full view start to be read, and where does the map start to point?"""
    single = df[~df.multi_evidence.astype(bool)].copy()
    labels = ["small", "mid", "large"] if bins == 3 else [f"q{i + 1}" for i in range(bins)]
    single["size"] = single.groupby("family", sort=False).evidence_fraction.transform(
        lambda x: _quantile_labels(x, labels))
    cols = ["evidence_fraction", "base", "oracle", "entropy", "pointing", "chance", "peak_crop", "random_crop", "box_crop"]
    g = single.groupby(["family", "size"], sort=False)
    out = g[cols].mean().join(g.size().rename("n")).reset_index()
    out.insert(2, "evidence_pct", 100 * out.pop("evidence_fraction"))
    out["size"] = pd.Categorical(out["size"], labels, ordered=True)
    order = {f: i for i, f in enumerate(single.family.unique())}
    return out.sort_values(["family", "size"], key=lambda c: c.map(order) if c.name == "family" else c).reset_index(drop=True)


def card_markdown(s) -> str:
    """The summary as the README's markdown table (points, 95% CIs); notebook 09 prints it and
    a test checks that the README carries exactly this text."""
    p = lambda v: f"{100 * v:.0f}"
    ci = lambda v, lo, hi: f"{100 * v:+.0f} [{100 * lo:+.0f}, {100 * hi:+.0f}]"
    lines = ["| family | n | base | oracle (evidence box appended) | gap [95% CI] | map peak in evidence [95% CI] "
             "(chance) | peak crop - random crop [95% CI] | box crop - random crop |",
             "|---|---|---|---|---|---|---|---|"]
    for r in s.itertuples():
        name = f"{r.family} (control)" if r.family == bench.CONTROL_FAMILY else r.family
        lines.append(f"| {name} | {r.n} | {p(r.base)} | {p(r.oracle)} | {ci(r.gap, r.gap_lo, r.gap_hi)} | "
                     f"{p(r.pointing)} [{p(r.pointing_lo)}, {p(r.pointing_hi)}] ({p(r.chance)}) | "
                     f"{ci(r.peak_minus_random, r.pmr_lo, r.pmr_hi)} | {100 * r.box_minus_random:+.0f} |")
    return "\n".join(lines)


def acceptance(s) -> list[tuple[str, bool, str]]:
    """The testbed's targets (what the reference model must show before any accuracy table
    means something: headroom, uncertainty when wrong, pointing), each as (target, met,
    what was measured)."""
    detail = s[s.family.isin(bench.DETAIL_FAMILIES)]
    control = s[s.family == bench.CONTROL_FAMILY]
    big_gap = detail[detail.gap >= 0.30]
    wrong_higher = s.dropna(subset=["H_right", "H_wrong"])
    point_ok = detail[detail.pointing >= 0.5]
    crop_ok = s[s.peak_minus_random >= 0.15]
    fmt = lambda d, col: ", ".join(f"{r.family} {100 * getattr(r, col):+.0f}" for r in d.itertuples())
    return [
        ("oracle - base >= 30 points on >= 4 detail families", len(big_gap) >= 4, fmt(detail, "gap")),
        ("control family: |oracle - base| <= 5 points",
         bool(len(control)) and bool((control.gap.abs() <= 0.05).all()), fmt(control, "gap")),
        ("entropy higher on wrong than right base answers (every family with both)",
         bool(len(wrong_higher)) and bool((wrong_higher.H_wrong > wrong_higher.H_right).all()),
         ", ".join(f"{r.family} {r.H_wrong:.2f} vs {r.H_right:.2f}" for r in wrong_higher.itertuples())),
        ("map peak in evidence on >= half of the items, >= 4 detail families", len(point_ok) >= 4,
         ", ".join(f"{r.family} {100 * r.pointing:.0f}% (chance {100 * r.chance:.0f}%)" for r in detail.itertuples())),
        ("peak crop beats random crop by >= 15 points on >= 4 families", len(crop_ok) >= 4,
         fmt(s, "peak_minus_random")),
    ]


def training_record(path=None) -> dict:
    """The training log saved beside the reference weights; {} for a model without one (a hub id)."""
    from ..api import REFERENCE_DIR

    p = Path(path or REFERENCE_DIR) / "training_log.json"
    record = json.loads(p.read_text()) if p.is_file() else {}
    if record.get("eval"):  # logs written before stop 46 repeat their last periodic eval as the final one
        record["eval"] = list({e["step"]: e for e in record["eval"]}.values())
    return record


def attention_loss(record: dict) -> float:
    """A training record's weight of the loss on where the answer attends (`TrainConfig.look`); 0 for none."""
    return float(record.get("config", {}).get("look", 0.0)) if record else 0.0


def training_line(record: dict) -> str:
    """How long the model trained, from its record: a model saved at an evaluation of a run that
    did not finish (the weights `egg.reference.train` writes at every `eval_every`) says so."""
    if not record:
        return "no training record (not a model egg.reference.train wrote)"
    look = attention_loss(record)  # it favours the attention-reading baselines: say so
    told = f"; trained with a loss on where its answer attends (weight {look:g})" if look else ""
    stage = record.get("decoder_stage")  # `egg.reference.existence --save`: pope's facts taught after the run
    told += (f"; then its decoder alone taught pope's facts at the full view, tower frozen "
             f"({stage['settings']['decoder_steps']} steps, {stage['minutes']:.0f} min)") if stage else ""
    if record.get("finished", "minutes" in record):
        return (f"trained for {record['steps']} steps in {record['minutes']:.0f} min; model "
                f"{record['config']['model']}{told}")
    step = record.get("steps") or max((e["step"] for e in record.get("eval", [])), default=0)
    return (f"saved at step {step} of {record['config'].get('max_steps') or 'a time budget'}, before its run finished; "
            f"model {record['config']['model']}{told}")


VICROP_COLUMNS = ["vicrop_rel_att", "vicrop_grad_att", "vicrop_pure_grad"]
READING_FAMILIES = ["text", "doc", "info"]


def method_table(rows):
    """Per family, on ``measure(..., methods=True)`` rows: accuracy (%) of the full view, the
    oracle, a crop 3x the evidence, EGG and each ViCrop variant, with the most frequent base and
    EGG answers and their shares: a family answered the same way on every item carries no signal."""
    cols = ["base", "oracle", "crop3x", "egg", *VICROP_COLUMNS]
    out = []
    for fam, g in rows.groupby("family", sort=False):
        top = {k: g[k + "_answer"].str.strip().str.lower().value_counts() for k in ("base", "egg")}
        out.append({"family": fam, "n": len(g), **{c: 100 * g[c].mean() for c in cols},
                    **{f"top {k} answer": f"{v.index[0]!r} ({100 * v.iloc[0] / len(g):.0f}%)" for k, v in top.items()}})
    return pd.DataFrame(out).set_index("family")


def gap_recovered(rows, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(share, lo, hi): (EGG - base) / (oracle - base) pooled over `rows`, with a 95% bootstrap
    interval that resamples items (numerator and denominator together). All three are NaN when
    the oracle gap's own interval reaches 0: a share of a gap that may not exist is no result
    (a model that ignores its crops gave "0% [-800000000, 200000000]")."""
    b, o, e = (rows[c].to_numpy(float) for c in ("base", "oracle", "egg"))
    rng = np.random.default_rng(seed)
    idx = [np.arange(len(b))] + [rng.integers(0, len(b), len(b)) for _ in range(n_boot)]
    gain, gap = (np.array([x[i].mean() - b[i].mean() for i in idx]) for x in (e, o))
    if np.percentile(gap[1:], 2.5) <= 0:
        return float("nan"), float("nan"), float("nan")
    ok = gap[1:] > 0  # at most 2.5% of the resamples lack a gap; they carry no share
    lo, hi = np.percentile(gain[1:][ok] / gap[1:][ok], [2.5, 97.5])
    return float(gain[0] / gap[0]), float(lo), float(hi)


def method_acceptance(rows, n_boot: int = 2000, seed: int = 0) -> list[tuple[str, bool, str]]:
    """The targets of a testbed at a real VLM's geometry, on ``measure(..., methods=True)`` rows:
    headroom, a pope family with signal, reading at a loose zoom, the method working as
    designed (small first boxes, maps with several components, a rule that zooms more than
    once) and the goal (share of the oracle gap EGG recovers; EGG against the best ViCrop
    variant, pooled with paired intervals). Each as (target, met, what was measured, with n)."""
    fam = {f: g for f, g in rows.groupby("family", sort=False)}
    gaps = {f: 100 * (g.oracle.mean() - g.base.mean()) for f, g in fam.items()}
    four = [f for f in NAMED_FAMILIES if f in gaps]
    out = [("oracle - base >= 30 points on >= 4 of text/vstar/doc/info",
            sum(gaps[f] >= 30 for f in four) >= 4, ", ".join(f"{f} {gaps[f]:+.0f}" for f in four))]
    if bench.CONTROL_FAMILY in gaps:
        c = gaps[bench.CONTROL_FAMILY]
        out.append(("control: |oracle - base| <= 5 points", abs(c) <= 5, f"{bench.CONTROL_FAMILY} {c:+.1f}"))
    if "pope" in fam:
        p = fam["pope"]
        acc, yes = 100 * p.base.mean(), 100 * (p.base_answer.str.strip().str.lower() == "yes").mean()
        out.append(("pope: base >= 65% with a 'yes' rate of 35-65%", acc >= 65 and 35 <= yes <= 65,
                    f"base {acc:.0f}%, yes {yes:.0f}% (n = {len(p)})"))
    reading = [f for f in READING_FAMILIES if f in fam]
    ratio = {f: fam[f].crop3x.mean() / max(fam[f].oracle.mean(), 1e-9) for f in reading}
    out.append(("a crop 3x the evidence side is read at >= 70% of the tight crop's accuracy (text/doc/info)",
                bool(reading) and all(r >= 0.7 for r in ratio.values()),
                ", ".join(f"{f} {100 * fam[f].crop3x.mean():.0f}% vs {100 * fam[f].oracle.mean():.0f}%"
                          for f in reading)))
    detail = rows[rows.family.isin(bench.DETAIL_FAMILIES)]
    med = float(np.nanmedian(detail.egg_box_ratio))
    h0 = float((detail.egg_spatial_entropy > 0).mean())
    zoom2 = float((detail.egg_best_index >= 2).mean())
    n = len(detail)
    out += [
        ("median area of EGG's first box <= 10x the evidence's", med <= 10, f"{med:.1f}x (n = {n})"),
        ("spatial entropy > 0 at state 0 on >= half the items", h0 >= 0.5, f"{100 * h0:.0f}% (n = {n})"),
        ("the default rule zooms twice or more on >= 30% of items", zoom2 >= 0.3, f"{100 * zoom2:.0f}% (n = {n})"),
    ]
    share, lo, hi = gap_recovered(detail, n_boot, seed)
    best = max(VICROP_COLUMNS, key=lambda c: detail[c].mean())
    d, dlo, dhi = paired_bootstrap(detail[best].to_numpy(float), detail.egg.to_numpy(float), n_boot, seed)
    e, elo, ehi = bootstrap_ci(detail.egg.to_numpy(float), n_boot, seed)
    out += [
        ("EGG recovers >= 40% of the oracle gap, pooled over the detail families", share >= 0.4,
         (f"{100 * share:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]" if share == share else
          f"undefined: the oracle gap ({100 * (detail.oracle.mean() - detail.base.mean()):+.1f} points) may be 0")
         + f" (EGG {100 * e:.1f}% [{100 * elo:.1f}, {100 * ehi:.1f}], n = {n})"),
        ("EGG beats the best ViCrop variant, pooled", d > 0 and dlo > 0,
         (f"EGG - {best.removeprefix('vicrop_').replace('_', '-')} = {100 * d:+.1f} [{100 * dlo:+.1f}, "
          f"{100 * dhi:+.1f}] points (n = {n})")),
    ]
    return out


def locating(vlm, families=None, n: int = 15, split: str = "val", seed: int = 0):
    """The training data's own locating questions ("where is the blue sign ?") asked at the full
    view, one row per question: the true position (column and row tenths; words on the 8x8
    geometry, as `egg.reference.data.position_words` teaches them), the model's answer, whether
    it is exact and within one tenth. A model that gives one position for every object has not
    learned to locate, and no relevance map of it can point (run 12, CHANGELOG stop 30)."""
    from ..reference.data import position_digits, position_words

    adapter, geometry = as_adapter(vlm), bench.geometry_for(vlm)
    rows = []
    for fam in families or bench.families():
        for item in bench.load(fam, split, n, seed, geometry=geometry):
            cache = EmbeddingCache()  # the image is encoded once for all its questions
            for q, a, box in item.facts:
                if a is None:  # a fact without an answer is a position
                    truth = position_words(box, item.image.size, digits=position_digits(geometry.name))
                    pred = answer_with_crops(adapter, item.image, q, [], cache=cache).strip()
                    rows.append({"family": fam, "question": q, "truth": truth, "answer": pred,
                                 "exact": pred == truth, "near": within_one_tenth(pred, truth)})
    return pd.DataFrame(rows, columns=["family", "question", "truth", "answer", "exact", "near"])


def binding(vlm, families=None, n: int = 25, split: str = "val", seed: int = 0, sigma: float = 1.0,
            maps: str = "egg"):
    """Does the map find the object the question names, or any object of its kind? Per item of
    the `NAMED_FAMILIES` among `families`: where the first map peaks ("named", as pointing counts
    it; "other": another object, from the position facts; "none"), and the raw map's mean on the
    named and on the other objects' cells over its mean. A map of signs, not of the blue sign,
    says "other" as often as there are other signs (CHANGELOG stop 37). `maps`: "egg" (the entropy
    gradient's) or a ViCrop variant's (`egg.baselines.VARIANTS`), e.g. to see whether a model's
    attention binds where its gradient map does not."""
    if maps != "egg" and maps not in VARIANTS:
        raise ValueError(f"maps must be 'egg' or a ViCrop variant {list(VARIANTS)}, got {maps!r}")
    adapter, geometry = as_adapter(vlm), bench.geometry_for(vlm)
    rows = []
    for fam in [f for f in NAMED_FAMILIES if families is None or f in families]:
        for item in bench.load(fam, split, n, seed, geometry=geometry):
            if maps == "egg":
                prep = adapter.prepare([item.image], item.question)
                raw = relevance(adapter, prep).maps[0]
            else:  # the variant prepares the prompt itself: the image is encoded once
                raw, prep, _ = vicrop_map(adapter, item.image, item.question, variant=maps)
            raw = np.asarray(raw, dtype=float)
            cell, size = peak_cell(raw, prep.grids[0], sigma), item.image.size
            named = [tuple(b) for b in item.boxes]
            others = [tuple(b) for _, a, b in item.facts if a is None and tuple(b) not in named]
            mean = raw.mean() or 1.0
            on = lambda boxes: raw[object_cells(boxes, raw.shape, size)].mean() / mean if boxes else math.nan
            rows.append({"family": fam, "index": int(item.meta.get("index", -1)), "others": len(others),
                         "peak": "named" if near(cell, named) else "other" if near(cell, others) else "none",
                         "named_ratio": on(named), "other_ratio": on(others)})
    return pd.DataFrame(rows, columns=["family", "index", "others", "peak", "named_ratio", "other_ratio"])


def binding_summary(df, n_boot: int = 2000, seed: int = 0):
    """`binding`'s rows per family: the share of peaks on the named object (95% bootstrap CI), on
    another object, on neither; `by_kind`, the named share among peaks on some object, against
    `kind_chance`, what a map that finds the kind but not the instance would give (one object in
    1 + others); the median ratios."""
    out = []
    for fam, g in df.groupby("family", sort=False):
        named, lo, hi = bootstrap_ci((g.peak == "named").values.astype(float), n_boot=n_boot, seed=seed)
        on_object = g.peak != "none"
        out.append({"family": fam, "n": len(g), "named": named, "named_lo": lo, "named_hi": hi,
                    "other": (g.peak == "other").mean(), "none": (g.peak == "none").mean(),
                    "by_kind": (g.peak[on_object] == "named").mean() if on_object.any() else math.nan,
                    "kind_chance": (1 / (1 + g.others)).mean(),
                    "named_ratio": g.named_ratio.median(), "other_ratio": g.other_ratio.median()})
    return pd.DataFrame(out)


def object_cells(boxes, shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The grid cells (rows x cols over an image of `size`) whose centre lies in one of `boxes`,
    and for a box too small to hold a cell centre, the cell holding its own centre."""
    rows, cols = shape
    W, H = size
    xs, ys = (np.arange(cols) + 0.5) * W / cols, (np.arange(rows) + 0.5) * H / rows
    mask = np.zeros(shape, bool)
    for b in boxes:
        inside = ((ys >= b[1]) & (ys <= b[3]))[:, None] & ((xs >= b[0]) & (xs <= b[2]))[None, :]
        if not inside.any():
            cx, cy = box_center(b)
            inside[min(rows - 1, int(cy * rows / H)), min(cols - 1, int(cx * cols / W))] = True
        mask |= inside
    return mask


def within_one_tenth(pred: str, truth: str) -> bool:
    """Column and row tenths ("3 7") each within one of the truth's; words must match exactly."""
    try:
        p, t = [int(v) for v in pred.split()], [int(v) for v in truth.split()]
    except ValueError:
        return pred == truth
    return len(p) == len(t) == 2 and all(abs(a - b) <= 1 for a, b in zip(p, t))
