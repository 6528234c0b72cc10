"""How well a model reads a detail at each crop scale: the reading a zoom needs (#16).

A zoom helps only where the model reads the detail in a crop several times the evidence's side
(notebook 09's `crop3x`). The 24x24 reference models read the tight crop and not the 3x one,
with their tower frozen or not (CHANGELOG, stop 49). These measurements tell whether the
tower's output holds the detail at all, whether a tower of another size can learn it, and
whether the decoder can learn to read it from those tokens. All score one reading fact per test
item in square crops `loose_crop(box, f)` around its object, as notebook 09's `crop3x` cuts them.
A crop several times its object's side often shows another object's detail too
(`ReadingSet.crowded`); telling the named one apart there is binding, which a pooled probe
cannot do and the decoder must, so each table says how often that was.

- `frozen_probe`: a probe on a trained model's frozen visual tokens, fitted on crops of every
  scale at once: linear on the tokens max-pooled, as the warm-up's reading probe pools them
  (`AuxHeads`), or a one-layer attention reader, which has to find the detail as a decoder does;
- `train_tower`: a tower and projector of a given size trained from scratch with that probe
  alone, on crops 1 to `max_scale` x the object (`crop_around`, as the warm-up draws them);
- `decoder.train_decoder`: a saved model's decoder (and projector) trained on the item's question
  about each crop, from its frozen tower's tokens.

Training crops are either drawn as training draws them (`training_set`: anywhere around the
object, of any aspect) or centred and square at the test's scales (`scale_set`'s train split).

    python -m egg.reference.reading frozen data/reference-llava15-large --out out/reading-run41.json
    python -m egg.reference.reading tower --hidden 128 --layers 4 --steps 1500 --out out/tower-128x4.json
    python -m egg.reference.reading decoder data/reference-llava15-detail --geometry llava15 --projector
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import synthetic as bench
from ..method.boxes import box_area, box_intersection, clamp_aspect
from ..synthetic.checks import loose_crop
from .build import ReferenceConfig, build_model, build_processor, tower_tokens, visual_tokens
from .data import Collator, _is_read, _resize, crop_around, look_tokens, own_question, shown_side
from .detail import detail_box
from .probes import OBJECT_FACT

SCALES = (1.0, 1.5, 2.0, 3.0, 4.0)
FAMILIES = ("text", "doc", "info", "vstar")  # the families whose evidence holds a detail to read


@dataclass
class ReadingSet:
    """Crops and what they read: `images[f]` is (n, S, S, 3) at scale f (one key: training crops);
    `crowded[f]`: whether that crop holds most of another object's detail as well; `detail_px[f]`:
    the detail's longer side in the crop, in input pixels; `detail_tokens[f]`: (n, tokens) bool, the
    visual tokens whose patch overlaps the detail. `rows`: where questions share images (the facts of one
    full view, `existence.full_view_set`), question k is about `images[f][rows[k]]`; None: about `images[f][k]`.
    Only `decoder.train_decoder` reads sets with shared images, and `looks`: per question, the visual
    tokens of the object it names (its attention loss; empty: none), and an answer None asks for that alone."""
    images: dict[float, np.ndarray]
    answers: list[str]
    families: list[str]
    questions: list[str] = field(default_factory=list)
    crowded: dict[float, np.ndarray] = field(default_factory=dict)
    detail_px: dict[float, np.ndarray] = field(default_factory=dict)
    detail_tokens: dict[float, np.ndarray] = field(default_factory=dict)
    rows: np.ndarray | None = None
    looks: list[tuple[int, ...]] = field(default_factory=list)

    def shown(self) -> np.ndarray:
        """Per question, its image's row in `images[f]`."""
        return np.arange(len(self.answers)) if self.rows is None else np.asarray(self.rows)


@dataclass
class ScaleReading:
    """Probe accuracy (%) per crop scale and family, with the n behind each number; `crowded`: the
    share (%) of those crops that show another object's detail too; `detail_px`: the detail's
    median longer side there, in input pixels (a patch is 14); `correct[f]`: per test item, in
    order, whether it was read at scale f (the decoder's last evaluation), for paired comparisons."""
    accuracy: dict[float, dict[str, float]]
    n: dict[str, int]
    crowded: dict[float, dict[str, float]]
    detail_px: dict[float, dict[str, float]]
    train_accuracy: float
    curve: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    correct: dict[float, list[bool]] = field(default_factory=dict)


def _facts(families, split: str, n: int, seed: int, geometry: str):
    for fam in families:
        for i in range(n):
            it = bench.item(fam, split, i, seed, geometry)
            reads = [(q, a, b) for q, a, b in it.facts if _is_read(a)]
            if reads:  # a pope item asks a shape only of a colour seen once
                yield fam, it, reads


def crowded(item: bench.Item, box, crop) -> bool:
    """Whether `crop` holds over half of the detail of an object other than `box`'s (pope: of another object)."""
    details = item.meta.get("details") or [(b, b) for q, a, b in item.facts if a == "yes" and OBJECT_FACT.fullmatch(q)]
    return any(box_area(box_intersection(crop, d) or (0, 0, 0, 0)) > 0.5 * box_area(d)
               for o, d in details if tuple(o) != tuple(box))


def scale_set(families=FAMILIES, split: str = "test", n: int = 50, seed: int = 13, geometry: str = "llava15-large",
              size: int = 336, scales=SCALES, patch: int = 14) -> ReadingSet:
    """One reading fact per item (drawn with `seed`), seen in a centred crop at every scale; `size`
    and `patch` are the model's input side and patch (LLaVA-1.5's by default)."""
    rng = np.random.default_rng(seed)
    images, answers, fams, questions = {f: [] for f in scales}, [], [], []
    crowd, px, toks = {f: [] for f in scales}, {f: [] for f in scales}, {f: [] for f in scales}
    for fam, it, reads in _facts(families, split, n, seed, geometry):
        q, a, b = reads[rng.integers(len(reads))]
        answers.append(a)
        questions.append(q)
        fams.append(fam)
        d = detail_box(it, b) or b
        for f in scales:
            crop = clamp_aspect(loose_crop(b, f), it.image.size)
            images[f].append(_resize(it.image, crop, size))
            crowd[f].append(crowded(it, b, crop))
            px[f].append(shown_side(d, crop, size, max))
            mask = np.zeros((size // patch) ** 2, dtype=bool)
            mask[list(look_tokens([d], [crop], size, patch))] = True
            toks[f].append(mask)
    arrays = lambda v: {f: np.array(x) for f, x in v.items()}
    return ReadingSet({f: np.stack(v) for f, v in images.items()}, answers, fams, questions, arrays(crowd),
                      arrays(px), arrays(toks))


def training_set(families=FAMILIES, n: int = 500, seed: int = 1, geometry: str = "llava15-large", size: int = 336,
                 max_scale: float = 4.0, per_item: int = 2, square: bool = False, spread: float = 1.0,
                 views: int = 1, own: bool = False) -> ReadingSet:
    """`per_item` reading facts per training item, each in `views` crops 1 to `max_scale` x its object's side
    (`crop_around`: any aspect or square, the object anywhere in it or within `spread` of its middle); with
    `own`, a crop of a multiple-choice item's one evidence box asks its own question (`data.own_question`)."""
    rng = np.random.default_rng(seed)
    images, answers, fams, questions = [], [], [], []
    for fam, it, reads in _facts(families, "train", n, seed, geometry):
        for k in rng.permutation(len(reads))[:per_item]:
            q, a, b = reads[k]
            q, a = own_question(it, q, a, b, own)
            for _ in range(views):
                images.append(_resize(it.image, crop_around(b, it.image.size, rng, (1.0, max_scale), 0.0, square, spread),
                                      size))
                answers.append(a)
                questions.append(q)
                fams.append(fam)
    return ReadingSet({0.0: np.stack(images)}, answers, fams, questions)


def _tokens(model, col: Collator, images: np.ndarray, batch: int = 50, projector: bool = True):
    """The visual tokens of `images`, (n, tokens, dim), without gradients, `batch` at a time; without
    `projector`, the tower's tokens that the projector takes."""
    import torch

    dev = next(model.parameters()).device
    layer = model.config.vision_feature_layer % (model.config.vision_config.num_hidden_layers + 1)
    for k in range(0, len(images), batch):
        pix = col.pixels(images[k:k + batch]).to(dev)
        with torch.no_grad():  # not around the yield: the caller's code would run without gradients
            v = visual_tokens(model, pix) if projector else tower_tokens(model, pix, layer)
        yield k, v


def _pooled(model, col: Collator, images: np.ndarray, mask: np.ndarray | None = None, batch: int = 50):
    """Max-pooled visual tokens, (n, dim); with `mask` (n, tokens), over its tokens only."""
    import torch

    out = []
    for k, v in _tokens(model, col, images, batch):
        if mask is not None:
            v = v.masked_fill(~torch.from_numpy(mask[k:k + len(v)]).to(v.device)[..., None], float("-inf"))
        out.append(v.amax(1))
    return torch.cat(out)


def _by_scale(predict, test: ReadingSet, label: dict[str, int]) -> dict[float, dict[str, float]]:
    truth = np.array([label[a] for a in test.answers])
    return {f: _family_means(test, predict(f, ims) == truth) for f, ims in test.images.items()}


def _family_means(test: ReadingSet, ok: np.ndarray) -> dict[str, float]:
    fams = np.array(test.families)
    return {fam: round(100 * float(ok[fams == fam].mean()), 1) for fam in dict.fromkeys(test.families)}


def _labels(*sets: ReadingSet) -> dict[str, int]:
    return {a: i for i, a in enumerate(sorted({a for s in sets for a in s.answers}))}


def frozen_probe(model, processor, train: ReadingSet, test: ReadingSet, steps: int = 1500, seed: int = 0,
                 pool: str = "all") -> ScaleReading:
    """A probe on `model`'s frozen visual tokens, fitted on `train`'s crops of every scale, scored
    per scale on `test`. `pool` "all": linear on the tokens max-pooled (standardised, full-batch
    Adam); "detail": the same over the tokens on the detail only, whether they hold it whatever
    else the crop shows (the decoder has to find them; "all" asks the tower to have done that);
    "attention": `attention_reader`, which has to find them by softmax attention, as a decoder does."""
    import torch

    if pool not in ("all", "detail", "attention"):
        raise ValueError(f"pool must be 'all', 'detail' or 'attention', got {pool!r}")
    torch.manual_seed(seed)
    col, label = Collator(processor), _labels(train, test)
    y = torch.tensor([label[a] for a in train.answers]).repeat(len(train.images))
    if pool == "attention":
        tokens = lambda ims: torch.cat([v.half().cpu() for _, v in _tokens(model, col, ims)])
        x = torch.cat([tokens(ims) for ims in train.images.values()])
        read, features = fit_reader(x, y, len(label), steps, seed), lambda f, ims: tokens(ims)
    else:
        masks = lambda s, f: s.detail_tokens[f] if pool == "detail" else None
        x = torch.cat([_pooled(model, col, ims, masks(train, f)) for f, ims in train.images.items()]).cpu()
        mu, sd = x.mean(0), x.std(0) + 1e-5
        lin = torch.nn.Linear(x.shape[1], len(label))
        opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(lin((x - mu) / sd), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        read = lambda v: lin((v - mu) / sd)
        features = lambda f, ims: _pooled(model, col, ims, masks(test, f)).cpu()
    with torch.no_grad():
        train_acc = 100 * float((_batched(read, x).argmax(1) == y).float().mean())
        acc = _by_scale(lambda f, ims: _batched(read, features(f, ims)).argmax(1).numpy(), test, label)
    return ScaleReading(acc, **_described(test), train_accuracy=round(train_acc, 1),
                        settings={"steps": steps, "seed": seed, "pool": pool})


def _batched(fn, x, batch: int = 256):
    import torch

    return torch.cat([fn(x[k:k + batch].float()) for k in range(0, len(x), batch)])


def attention_reader(dim: int, n_labels: int, heads: int = 4):
    """Softmax attention pooling with `heads` learned queries, then a linear read: a one-layer
    reader that has to find the detail's tokens, as a decoder's attention does (max-pooling need not)."""
    import torch

    class Reader(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(dim)
            self.key = torch.nn.Linear(dim, dim)
            self.query = torch.nn.Parameter(torch.randn(heads, dim) / dim ** 0.5)
            self.out = torch.nn.Linear(heads * dim, n_labels)

        def forward(self, v):  # (n, tokens, dim) -> (n, n_labels)
            v = self.norm(v)
            w = torch.softmax(torch.einsum("ntd,hd->nht", self.key(v), self.query) / dim ** 0.5, -1)
            return self.out(torch.einsum("nht,ntd->nhd", w, v).flatten(1))

    return Reader()


def fit_reader(x, y, n_labels: int, steps: int, seed: int = 0, batch: int = 64, lr: float = 3e-3):
    """`attention_reader` fitted on tokens `x` (n, tokens, dim) to labels `y` by minibatch Adam."""
    import torch

    torch.manual_seed(seed)
    reader = attention_reader(x.shape[-1], n_labels)
    opt = torch.optim.Adam(reader.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(x), size=min(batch, len(x)), replace=False))
        loss = torch.nn.functional.cross_entropy(reader(x[idx].float()), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return reader.eval()


def _warm_cosine(steps: int):
    """A learning-rate factor: 100 steps of linear warm-up, then a cosine to 0 at `steps`."""
    return lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / max(steps, 1))))


def _counts(test: ReadingSet) -> dict[str, int]:
    return {fam: test.families.count(fam) for fam in dict.fromkeys(test.families)}


def _per_family(test: ReadingSet, values: dict[float, np.ndarray], stat) -> dict[float, dict[str, float]]:
    fams = np.array(test.families)
    return {f: {fam: round(float(stat(v[fams == fam])), 1) for fam in dict.fromkeys(test.families)}
            for f, v in values.items()}


def _described(test: ReadingSet) -> dict:
    """`ScaleReading`'s fields that describe the test crops rather than the model."""
    return {"n": _counts(test), "crowded": _per_family(test, test.crowded, lambda v: 100 * v.mean()),
            "detail_px": _per_family(test, test.detail_px, np.median)}


def train_tower(cfg: ReferenceConfig, train: ReadingSet, test: ReadingSet, steps: int = 1500, batch: int = 32,
                lr: float = 1e-3, seed: int = 0, device: str = "cpu", eval_every: int = 500, log=print) -> ScaleReading:
    """A tower and projector of `cfg`'s size, from scratch, trained through a max-pooled linear
    reading probe alone (warm-up, then a cosine to 0), scored per scale on `test` every `eval_every` steps."""
    import torch

    proc = build_processor(cfg)
    col, label = Collator(proc), _labels(train, test)
    model = build_model(cfg, proc.tokenizer, seed).to(device)
    probe = torch.nn.Linear(cfg.text_hidden, len(label)).to(device)
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters(),
              *probe.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warm_cosine(steps))
    (images,) = train.images.values()
    y = torch.tensor([label[a] for a in train.answers], device=device)
    rng = np.random.default_rng(seed)
    predict = lambda f, ims: probe(_pooled(model, col, ims)).argmax(1).cpu().numpy()
    curve, smooth, t0, acc = [], None, time.time(), {}
    for s in range(1, steps + 1):
        idx = rng.choice(len(images), size=min(batch, len(images)), replace=False)
        feats = visual_tokens(model, col.pixels(images[idx]).to(device))
        loss = torch.nn.functional.cross_entropy(probe(feats.amax(1)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        if s % eval_every == 0 or s == steps:
            model.eval()
            acc = _by_scale(predict, test, label)
            model.train()
            curve.append({"step": s, "loss": smooth, "seconds": time.time() - t0, "accuracy": acc})
            log(f"step {s}/{steps} loss {smooth:.3f} {(time.time() - t0) / s:.2f}s/step " + _line(acc))
    model.eval()
    train_acc = 100 * float(np.mean(predict(0.0, images) == y.cpu().numpy()))
    return ScaleReading(acc, **_described(test), train_accuracy=round(train_acc, 1), curve=curve,
                        settings={"model": cfg.to_dict(), "steps": steps, "batch": batch, "lr": lr, "seed": seed})


def _line(acc: dict[float, dict[str, float]]) -> str:
    return " | ".join(f"{f:g}x " + " ".join(f"{k} {v:.0f}" for k, v in d.items()) for f, d in acc.items())


def table(r: ScaleReading) -> str:
    """A markdown table: one row per family, one column per scale, each "accuracy % (crowded %,
    detail px)"."""
    scales = list(r.accuracy)
    rows = ["| family | n | " + " | ".join(f"{f:g}x" for f in scales) + " |", "|---|---|" + "---|" * len(scales)]
    cell = lambda f, fam: f"{r.accuracy[f][fam]:.0f} ({r.crowded[f][fam]:.0f}, {r.detail_px[f][fam]:.0f})"
    rows += [f"| {fam} | {n} | " + " | ".join(cell(f, fam) for f in scales) + " |" for fam, n in r.n.items()]
    return "\n".join(rows)


def main(argv=None) -> None:
    """The three measurements' command: over 80 lines, as each one's sets and flags are built here."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["frozen", "tower", "decoder"])
    ap.add_argument("model", nargs="?", help="frozen, decoder: the saved model whose tower is probed / decoder trained")
    ap.add_argument("--geometry", default="llava15-large")
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help="comma-separated families whose reading facts are scored (pope's: its shapes)")
    ap.add_argument("--train-items", type=int, default=None,
                    help="per family (default: 150 centred, each at every scale; 500 random, two crops each)")
    ap.add_argument("--test-items", type=int, default=50, help="per family, of the test split")
    ap.add_argument("--test-seed", type=int, default=13)
    for flag, default in (("--hidden", 64), ("--layers", 3), ("--heads", 4)):  # tower: its size
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--pool", choices=["all", "detail", "attention"], default="all",
                    help="frozen: max-pool every token, or only those on the detail; or attention-pool them")
    ap.add_argument("--max-scale", type=float, default=4.0)
    ap.add_argument("--scales", default="1,1.5,2,3,4", help="the test crops' sides, x the object's (pope asks at 5-7)")
    ap.add_argument("--train-crops", choices=["centred", "random", "square"], default=None,
                    help="centred crops at the test's scales (frozen's default), or random ones 1 to --max-scale x, "
                         "anywhere around the object and of any aspect, as training draws them (decoder's default), "
                         "or such crops made square")
    ap.add_argument("--views", type=int, default=1, help="random and square crops: each fact in this many crops")
    ap.add_argument("--per-item", type=int, default=2, help="random and square crops: reading facts per train item")
    ap.add_argument("--spread", type=float, default=1.0,
                    help="random and square crops: the object's offset is drawn from this middle share of the room "
                         "around it (1: anywhere; 0: centred)")
    ap.add_argument("--lr", type=float, default=2e-4, help="decoder: its learning rate")
    ap.add_argument("--eval-every", type=int, default=500, help="decoder: score the test crops this often")
    ap.add_argument("--projector", action="store_true", help="decoder: train the projector too (LLaVA's stage 2)")
    ap.add_argument("--size", type=int, default=336, help="tower: the input side (patch 14); frozen: the model's")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="a JSON file for the result")
    a = ap.parse_args(argv)
    import torch

    from .decoder import train_decoder  # here: decoder imports this module
    torch.set_num_threads(a.threads)
    fams, scales = tuple(f for f in a.families.split(",") if f), tuple(float(f) for f in a.scales.split(","))
    if not fams or set(fams) - set(bench.families()):
        raise SystemExit(f"--families {a.families!r}: give some of {bench.families()}, comma-separated")
    if a.what in ("frozen", "decoder"):
        if not a.model:
            raise SystemExit(f"{a.what}: name the saved model, e.g. data/reference-llava15-large")
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(a.model).to(a.device).eval()
        proc, vc = AutoProcessor.from_pretrained(a.model), model.config.vision_config
        shape, at = dict(geometry=a.geometry, size=vc.image_size), dict(patch=vc.patch_size, scales=scales)
        test = scale_set(fams, n=a.test_items, seed=a.test_seed, **at, **shape)
        crops = a.train_crops or ("centred" if a.what == "frozen" else "random")
        if crops == "centred":
            train = scale_set(fams, split="train", n=a.train_items or 150, seed=1, **at, **shape)
        elif a.what == "frozen" and a.pool == "detail":
            raise SystemExit("--pool detail needs --train-crops centred: random crops do not record "
                             "the detail's tokens")
        else:
            train = training_set(fams, n=a.train_items or 500, max_scale=a.max_scale, square=crops == "square",
                                 spread=a.spread, views=a.views, per_item=a.per_item, **shape)
        if a.what == "frozen":
            r = frozen_probe(model, proc, train, test, pool=a.pool)
        else:
            r = train_decoder(model, proc, train, test, a.steps, lr=a.lr, eval_every=a.eval_every,
                              projector=a.projector, log=lambda m: print(m, flush=True))
        r.settings.update(train_crops=crops, spread=a.spread, views=a.views, per_item=a.per_item)
        r.settings["model"] = a.model
    else:
        cfg = ReferenceConfig(image_size=a.size, patch_size=14, vision_hidden=a.hidden, vision_layers=a.layers,
                              vision_heads=a.heads, text_hidden=128, text_layers=1, text_heads=4,
                              max_positions=2048, position_init="sincos")
        test = scale_set(fams, n=a.test_items, seed=a.test_seed, geometry=a.geometry, size=a.size, scales=scales)
        train = training_set(fams, n=a.train_items or 500, geometry=a.geometry, size=a.size, max_scale=a.max_scale)
        r = train_tower(cfg, train, test, a.steps, device=a.device, log=lambda m: print(m, flush=True))
    r.settings.update({k: getattr(a, k) for k in ("geometry", "families", "train_items", "test_items", "test_seed")})
    print(table(r))
    print("(in brackets: % of crops that show another object's detail too, and the detail's median side in px)")
    print(f"train accuracy {r.train_accuracy:.0f}%")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(asdict(r), indent=1))


if __name__ == "__main__":
    main()
