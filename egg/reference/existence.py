"""Is pope's answer in a model's visual states? An attention reader fitted on them (#16).

The 24x24 reference models answer pope's "is there a {colour} {shape} in the image ?" "yes" as
often on its negatives as on its positives, even with the asked object's tight crop appended
and on training images (CHANGELOG, stop 64). This tells where that fails: a small reader,
its query built from the asked colour and shape alone, attends over one image's visual states
at one decoder layer and answers yes or no. It is fitted on pope's training facts and scored on
test questions. If it answers where the decoder does not, the states hold the answer and the
decoder's training is what misses it; if it does not, the tower's tokens lack it.

The image's tokens come before the question in the prompt, so under causal attention their
states at every layer do not depend on the question: one forward pass per image serves every
question about it.

    python -m egg.reference.existence data/reference-llava15-large-pope --train-images 600 --out out/existence.json

With ``--decoder-steps N`` the model's own decoder is then trained on the same facts at the full view
from its frozen tower's tokens (`decoder.train_decoder`, nothing else taught) and scored on the same
questions: whether it learns what the reader finds, and how fast. Each full view is encoded once and
runs through the decoder once per step, its facts sharing that pass (`--decoder-images` views a step);
``--layers ''`` skips the readers. ``--rehearse N`` mixes in reading crops of N training items per
reading family, so that the decoder keeps what it read before (taught pope alone, it forgot: stop 66);
``--rehearse-full N`` the full views of N training items of every other family, with what training teaches
there (`taught_at_full_view`: with reading crops alone rehearsed, the control fell from 99 to 71%, stop 67);
``--decoder-look W`` adds training's attention loss on each full view's question (the object it names; those
not taught there are asked for it alone): taught without, the stage moved EGG's map off the evidence (stop 67);
``--decoder-train REGEX`` trains only the decoder parameters it names; ``--rehearse-mix N`` the conversations
the model was trained on (`training_mixture`: full views with crops appended, where EGG and the oracle ask;
with the attention loss alone on full views, run 68b lost the reading there, stop 68);
``--save DIR`` keeps the taught model, its record under `decoder_stage` (and a recipe's "decoder" stage
runs this command).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import synthetic as bench
from ..synthetic.core import COLOURS, SHAPES

COLOUR_NAMES, SHAPE_NAMES = list(COLOURS), list(SHAPES)


@dataclass
class ExistenceProbe:
    """One reader's scores (%): on its training questions, on the test questions, and its "yes" rate
    on the test's positives and negatives (equal rates: the answer does not depend on the image).
    `curve`: test accuracy after some epochs, with the questions seen by then; `correct`: per test
    question, in order, whether the reader answered it (for paired comparisons with a model's answers)."""
    layer: int
    query: str  # what the reader's query is built from: "colour+shape", "colour" or "shape"
    train_accuracy: float
    test_accuracy: float
    yes_on_positives: float
    yes_on_negatives: float
    n_train: int
    n_test: int
    curve: list[dict] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)


def parse_question(q: str) -> tuple[int, int]:
    """The (colour, shape) indices that pope's question asks about."""
    words = q.split()
    if len(words) < 5 or words[:3] != ["is", "there", "a"] or words[3] not in COLOURS or words[4] not in SHAPES:
        raise ValueError(f"not a pope question: {q!r} (expected 'is there a {{colour}} {{shape}} ...')")
    return COLOUR_NAMES.index(words[3]), SHAPE_NAMES.index(words[4])


def asked(item, facts: bool) -> list[tuple[str, str, list]]:
    """(question, "yes"/"no", the boxes it names) of a pope item: its "is there" training facts (`facts`;
    a negative names the object it differs from, as training looks there), or its test question."""
    if not facts:
        return [(item.question, item.meta["label"], list(item.boxes))]
    return [(q, a, [b]) for q, a, b in item.facts if a in ("yes", "no") and q.startswith("is there")]


def questions(items, facts: bool) -> np.ndarray:
    """Rows (image, colour, shape, yes) of pope items' `asked` questions."""
    rows = [(i, *parse_question(q), a == "yes") for i, it in enumerate(items) for q, a, _ in asked(it, facts)]
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def visual_states(vlm, image) -> "torch.Tensor":
    """(layers + 1, visual tokens, hidden): the image's visual tokens at the decoder's input and after
    each layer, in float16 (a probe's input, not the model's)."""
    import torch

    ad = vlm.adapter
    prep = ad.prepare([image], "is there a red circle in the image ?")
    emb = ad.inputs_embeds(prep, ad.visual_embeddings(prep))
    with torch.no_grad():
        # the decoder alone: no logits over the sequence
        out = vlm.model.get_decoder()(inputs_embeds=emb, output_hidden_states=True)
    return torch.stack([h[0, prep.visual_positions] for h in out.hidden_states]).half()


def full_view_set(items, facts, size: int, patch: int = 0):
    """A `reading.ReadingSet` of questions on each item's full view, resized to the model's input square
    as training shows it; the questions about one item share its view (`rows`). `facts`: pope's `asked`
    training facts (True) or test question (False), or a function giving an item's (question, answer
    or None, boxes named) triples (`taught_at_full_view`). With `patch`, each question's `looks` are the
    visual tokens over the boxes it names (training's attention loss); without, the questions answered
    None (asked only to look) are left out. `items` may be a generator: only the views are kept."""
    from .data import _resize, look_tokens
    from .reading import ReadingSet

    ask = facts if callable(facts) else (lambda it: asked(it, facts))
    views, shown, qs, answers, families, looks = [], [], [], [], [], []
    for i, it in enumerate(items):
        views.append(_resize(it.image, (0, 0, *it.image.size), size))
        for q, a, boxes in ask(it):
            if a is None and not patch:
                continue
            shown.append(i), qs.append(q), answers.append(a), families.append(it.family)
            looks.append(look_tokens(boxes, [(0, 0, *it.image.size)], size, patch) if patch else ())
    zero = np.zeros(len(shown))
    return ReadingSet({1.0: np.stack(views)}, answers, families, qs, crowded={1.0: zero},
                      detail_px={1.0: zero}, rows=np.array(shown), looks=looks if patch else [])


def taught_at_full_view(item, size: int, readable_px: float, digits: bool = True) -> list[tuple[str, str | None, list]]:
    """What training asks on an item's full view (`data.examples_for`): its own question and facts, with
    the boxes each names (where training's attention loss looks); the answer None where it is read off a
    detail that the view does not show at `readable_px` or more (asked, not taught)."""
    from .data import item_turns, untaught

    own, facts = item_turns(item, digits)
    turns = [own, *facts]
    skip = set(untaught(turns, [(0, 0, *item.image.size)], size, readable_px))
    named = {**{q: [b] for q, _, b in item.facts}, item.question: list(item.boxes)}  # as examples_for's looks
    return [(q, None if k in skip else a, named[q]) for k, (q, a, _) in enumerate(turns)]


def training_mixture(model_dir, n: int, workers: int = 2) -> list:
    """The conversations the model in `model_dir` was trained on, as its training record's settings draw
    them (`data.render_dataset`), from its first `n` training items per family: full views with the
    crops appended as EGG and the oracle append them, each turn looking at what it names."""
    from .build import ReferenceConfig
    from .config import TrainConfig
    from .data import render_dataset

    log = Path(model_dir) / "training_log.json"
    if not log.is_file():
        raise SystemExit(f"--rehearse-mix draws {model_dir}'s training conversations from its training_log.json, "
                         "which it lacks: give a model trained by egg.reference.train")
    cfg = TrainConfig(**{**json.loads(log.read_text())["config"], "items_per_family": n, "workers": workers})
    return render_dataset(cfg, ReferenceConfig(**cfg.model), lambda m: print("mixture " + m, flush=True))[0]


def _reader(dim: int, heads: int, width: int, colour: bool, shape: bool):
    import torch
    from torch import nn

    class Reader(nn.Module):
        """Query = embedding(colour) + embedding(shape); keys and values linear in the states."""

        def __init__(self):
            super().__init__()
            self.colour, self.shape = nn.Embedding(len(COLOURS), heads * width), nn.Embedding(len(SHAPES), heads * width)
            self.norm, self.key, self.value = nn.LayerNorm(dim), nn.Linear(dim, heads * width), nn.Linear(dim, heads * width)
            self.out = nn.Sequential(nn.Linear(2 * heads * width, 128), nn.GELU(), nn.Linear(128, 1))

        def forward(self, x, img, c, s):
            """x: (B, T, dim) the states of B images; img, c, s: per question, its image's row in x, colour, shape."""
            x = self.norm(x.float())
            b, t, _ = x.shape
            q = (self.colour(c) if colour else 0) + (self.shape(s) if shape else 0)
            q = q.view(-1, heads, width)
            k = self.key(x).view(b, t, heads, width)[img]
            v = self.value(x).view(b, t, heads, width)[img]
            att = torch.einsum("nhk,nthk->nht", q, k).div(width ** 0.5).softmax(-1)
            read = torch.einsum("nht,nthk->nhk", att, v).reshape(len(c), -1)
            return self.out(torch.cat([read, q.reshape(len(c), -1)], -1)).squeeze(-1)

    return Reader()


def fit_reader(train_states, train_rows: np.ndarray, test_states, test_rows: np.ndarray, layer: int = 0,
               query: str = "colour+shape", epochs: int = 30, images_per_batch: int = 16, lr: float = 2e-3,
               seed: int = 0, curve_at=(1, 2, 3, 5, 8, 12, 20, 30)) -> ExistenceProbe:
    """Fit a reader on `train_states[:, layer]` (N, layers + 1, T, dim) for `train_rows` (`questions`),
    score it on the test's. A batch is `images_per_batch` images with all their questions."""
    import torch
    from torch import nn

    if query not in ("colour+shape", "colour", "shape"):
        raise ValueError(f"query must be 'colour+shape', 'colour' or 'shape', got {query!r}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    m = _reader(train_states.shape[-1], 4, 32, "colour" in query, "shape" in query)
    opt = torch.optim.AdamW(m.parameters(), lr, weight_decay=0.01)
    tr, te = torch.as_tensor(train_rows), torch.as_tensor(test_rows)

    def batches(states, rows, shuffle):
        order = torch.randperm(len(states), generator=gen) if shuffle else torch.arange(len(states))
        for imgs in order.split(images_per_batch):
            imgs = imgs.sort().values
            r = rows[torch.isin(rows[:, 0], imgs)]
            if len(r):
                yield r, m(states[imgs, layer], torch.searchsorted(imgs, r[:, 0].contiguous()), r[:, 1], r[:, 2])

    def answers(states, rows):
        """per row of `rows`, in order: whether the reader says yes"""
        with torch.no_grad():
            got = {}
            for r, logit in batches(states, rows, False):
                got.update(zip(map(tuple, r.tolist()), (logit > 0).tolist()))
        return np.array([got[tuple(r)] for r in rows.tolist()])

    curve, seen = [], 0
    for ep in range(1, epochs + 1):
        for r, logit in batches(train_states, tr, True):
            loss = nn.functional.binary_cross_entropy_with_logits(logit, r[:, 3].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(r)
        if ep in curve_at and ep < epochs:
            curve.append({"epoch": ep, "questions_seen": seen,
                          "test_accuracy": round(100 * float((answers(test_states, te) == test_rows[:, 3]).mean()), 1)})
    yes_tr, yes_te = answers(train_states, tr), answers(test_states, te)
    pos = test_rows[:, 3] == 1
    pct = lambda a: round(100 * float(np.mean(a)), 1) if len(a) else float("nan")
    ok = yes_te == test_rows[:, 3]
    acc = pct(ok)
    curve.append({"epoch": epochs, "questions_seen": seen, "test_accuracy": acc})
    return ExistenceProbe(layer, query, pct(yes_tr == train_rows[:, 3]), acc, pct(yes_te[pos]), pct(yes_te[~pos]),
                          len(train_rows), len(test_rows), curve, ok.tolist())


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a saved model (e.g. data/reference-llava15-large-pope)")
    ap.add_argument("--train-images", type=int, default=600, help="pope training items (seed 1), all their facts")
    ap.add_argument("--test-items", type=int, default=300, help="pope test items")
    ap.add_argument("--test-seed", type=int, default=13)
    ap.add_argument("--layers", default="0", help="comma-separated decoder layers (0: its input); '' for no reader")
    ap.add_argument("--queries", default="colour+shape", help="comma-separated: colour+shape, colour, shape")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--decoder-steps", type=int, default=0,
                    help="> 0: then train the model's decoder this many steps on the same facts (frozen tower)")
    ap.add_argument("--decoder-lr", type=float, default=5e-4, help="the decoder's learning rate")
    ap.add_argument("--decoder-images", type=int, default=8, help="training images per decoder step, all their facts")
    ap.add_argument("--rehearse", type=int, default=0,
                    help="> 0: the decoder also reads two facts of this many training items per reading family "
                         "in square crops 1-4 x their object (as runs 47-48 drew them): what it read before")
    ap.add_argument("--rehearse-own", type=int, default=0,
                    help="1: a rehearsal crop of a multiple-choice item's one evidence box asks its own question, "
                         "as the oracle asks it (run 48's --read-own)")
    ap.add_argument("--rehearse-full", type=int, default=0,
                    help="> 0: and the full views of this many training items of every other family, with what "
                         "training teaches there (their own question, where each object is, what is readable)")
    ap.add_argument("--rehearse-px", type=float, default=64.0,
                    help="with --rehearse-full: a detail shown this many pixels or more is read there (--readable-px)")
    ap.add_argument("--decoder-train", default="",
                    help="a regex: only the decoder parameters whose names match it train, e.g. "
                         "'(v_proj|o_proj|mlp|lm_head)' keeps where it attends (run 67 lost EGG's map)")
    ap.add_argument("--decoder-look", type=float, default=0.0,
                    help="> 0: the decoder stage's attention loss at this weight (training's --look): each full-view "
                         "question attends to the object it names; with --rehearse-full, the questions not taught "
                         "there are asked for that alone")
    ap.add_argument("--rehearse-mix", type=int, default=0,
                    help="> 0: the decoder also rehearses the conversations the model was trained on (its training "
                         "record's mixture), of this many training items per family, with crops appended")
    ap.add_argument("--mix-share", type=float, default=0.5, help="with --rehearse-mix: the share of steps that do")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="a JSON file for the results")
    ap.add_argument("--save", default=None, help="with --decoder-steps: a directory for the model with its taught decoder")
    return ap


SETTINGS_APART = {"model", "out", "save", "threads"}  # where it reads and writes, not what it teaches


def decoder_record(before: dict, args: dict, geometry: str, decoder, minutes: float) -> dict:
    """The training record saved with a taught decoder: its model's (`before`, as `egg.reference.train`
    wrote it; the look weight and the stages before stay readable there) plus the stage: its settings,
    minutes and pope accuracy curve."""
    stage = {"settings": {k: v for k, v in args.items() if k not in SETTINGS_APART}, "continues": args["model"],
             "minutes": round(minutes, 1), "result": asdict(decoder)}
    return {**before, "config": {**before.get("config", {}), "geometry": geometry}, "finished": True,
            "decoder_stage": stage}


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    import time

    import torch
    from tqdm import tqdm

    from ..api import load_model

    torch.set_num_threads(a.threads)
    vlm = load_model(a.model, device="cpu")
    n_layers = vlm.adapter.num_layers
    layers = [int(v) for v in a.layers.split(",") if v.strip()]
    if a.save and a.decoder_steps <= 0:
        raise SystemExit("--save keeps the model with its taught decoder: give --decoder-steps too")
    if any(not 0 <= v <= n_layers for v in layers):
        raise SystemExit(f"--layers {a.layers!r}: give layers from 0 (the decoder's input) to {n_layers}, comma-separated")
    # rendered first, while this process is small: its workers fork it (forked after the sets below, they
    # outgrew 24 GB)
    mix = training_mixture(a.model, a.rehearse_mix, a.threads) if a.decoder_steps > 0 and a.rehearse_mix > 0 else ()
    geo = bench.geometry_for(vlm)
    train = bench.load("pope", "train", a.train_images, 1, geometry=geo)
    test = bench.load("pope", "test", a.test_items, a.test_seed, geometry=geo)
    xs = {name: torch.stack([visual_states(vlm, it.image) for it in tqdm(items, desc=f"{name} states")])
          for name, items in (("train", train), ("test", test)) if layers}
    rows = {"train": questions(train, facts=True), "test": questions(test, facts=False)}
    results = []
    for layer in layers:
        for query in a.queries.split(","):
            r = fit_reader(xs["train"], rows["train"], xs["test"], rows["test"], layer, query, a.epochs)
            results.append(r)
            print(f"layer {layer} query {query}: train {r.train_accuracy}% test {r.test_accuracy}% "
                  f"(yes on {r.yes_on_positives}% of positives, {r.yes_on_negatives}% of negatives; "
                  f"n = {r.n_train} / {r.n_test})", flush=True)
    decoder = None
    if a.decoder_steps > 0:
        from .decoder import joined, train_decoder
        from .reading import training_set

        size, t0 = vlm.adapter.input_resolution[0], time.time()
        patch = vlm.model.config.vision_config.patch_size if a.decoder_look > 0 else 0
        taught = full_view_set(train, True, size, patch)
        del train  # full-size items (~1.5 MB each): only their views are taught from here on
        if a.rehearse > 0:
            taught = joined(taught, training_set(n=a.rehearse, geometry=geo.name, size=size, square=True, spread=0.25,
                                                 own=bool(a.rehearse_own)))
        if a.rehearse_full > 0:
            from .data import position_digits

            items = (bench.item(f, "train", i, 1, geo) for f in bench.families() if f != "pope"
                     for i in range(a.rehearse_full))
            ask = lambda it: taught_at_full_view(it, size, a.rehearse_px, position_digits(geo.name))
            taught = joined(taught, full_view_set(items, ask, size, patch))
        decoder = train_decoder(vlm.model, vlm.processor, taught, full_view_set(test, False, size),
                                a.decoder_steps, a.decoder_images, a.decoder_lr, eval_every=max(a.decoder_steps // 6, 1),
                                train_only=a.decoder_train, look=a.decoder_look, log=lambda m: print("decoder " + m, flush=True),
                                mix=mix, mix_share=a.mix_share if mix else 0.0)
        if a.save:
            from .checkpoint import save

            log = Path(a.model) / "training_log.json"
            before = json.loads(log.read_text()) if log.is_file() else {}
            save(vlm.model, vlm.processor, Path(a.save),
                 decoder_record(before, vars(a), geo.name, decoder, (time.time() - t0) / 60))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"model": a.model, "train_images": a.train_images, "test_items": a.test_items,
                                           "test_seed": a.test_seed, "results": [asdict(r) for r in results],
                                           "decoder": asdict(decoder) if decoder else None}, indent=1))


if __name__ == "__main__":
    main()
