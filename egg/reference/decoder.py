"""A saved model's decoder taught from its frozen tower's tokens (#16): the `reading decoder`
command's and `existence --decoder-steps`' training.

The tower's output is computed once per distinct image. Every prompt opens with the same text and
image tokens, and under causal attention their states do not depend on the question that follows:
that prefix runs once per image and a step, and every question about the image reads its keys and
values (pope asks about 11 facts of one full view).
"""
from __future__ import annotations

import re
import time

import numpy as np

from .data import Collator
from .reading import ReadingSet, ScaleReading, _described, _family_means, _line, _tokens, _warm_cosine


def joined(*sets: ReadingSet) -> ReadingSet:
    """One training set of several with one scale each (pope's full views and other families' reading
    crops), each question about its own set's image."""
    if any(len(s.images) != 1 for s in sets):
        raise ValueError("joined takes training sets of one scale each")
    imgs = [next(iter(s.images.values())) for s in sets]
    starts = np.cumsum([0] + [len(i) for i in imgs[:-1]])
    return ReadingSet({0.0: np.concatenate(imgs)}, [a for s in sets for a in s.answers],
                      [f for s in sets for f in s.families], [q for s in sets for q in s.questions],
                      rows=np.concatenate([s.shown() + k for s, k in zip(sets, starts)]),
                      looks=[v for s in sets for v in (s.looks or [()] * len(s.answers))])


def _encoded(col: Collator, test: ReadingSet) -> list[tuple[list[int], list[int], list[int]]]:
    """(ids, labels, the position predicting the answer) per question; an answer None is not asked for."""
    return [col.encode(1, [(q, a)]) for q, a in zip(test.questions, test.answers)]


def _decoder_pass(model, col: Collator, feats, enc, image=None, looks=None):
    """Logits and labels of one batch, from the first token after the image on: `feats` (u, tokens, dim) the
    visual tokens of u images, `enc` the encoded questions, question k about image `image[k]` (default: k).
    The prompt up to the image's last token is the same for every question, and under causal attention its
    states do not depend on what follows: it runs once per image, and its keys and values serve every
    question about that image (pope has about 11 facts per picture). With `looks` (per question, per turn:
    the visual tokens of the object it names; the model's attention then `look.ROWS_MASKED`), also
    training's attention loss (`look.look_loss`) over the turns that name one, else None."""
    import torch

    from .look import attention_rows, capturing, look_loss

    ids, lab, mask = (t.to(feats.device) for t in col.pad(enc))
    image_token = model.config.image_token_id
    p = int((ids[0] == image_token).nonzero().max()) + 1
    if not (ids[:, :p] == ids[:1, :p]).all() or (lab[:, :p + 1] != -100).any():
        raise ValueError("every prompt must open with the same text and image tokens, unscored")
    embed, lm = model.get_input_embeddings(), model.model.language_model
    prefix = embed(ids[:1, :p]).expand(len(feats), -1, -1)
    prefix = prefix.masked_scatter((ids[:1, :p] == image_token)[..., None].expand_as(prefix), feats.to(prefix.dtype))
    cache = lm(inputs_embeds=prefix, use_cache=True).cache
    cache.reorder_cache(torch.arange(len(enc), device=feats.device) if image is None
                        else torch.as_tensor(image, device=feats.device))
    with capturing() as captured:
        h = lm(inputs_embeds=embed(ids[:, p:]), attention_mask=mask, cache=cache, use_cache=True)
    out = model.lm_head(h.last_hidden_state)[:, :-1], lab[:, p + 1:]
    if looks is None:
        return out
    named = [(k, enc[k][2][t] - p, v) for k, turns in enumerate(looks) for t, v in enumerate(turns) if v]
    if not named:
        return (*out, None)
    look_q = torch.tensor([(k, q) for k, q, _ in named], device=feats.device)
    look_at = torch.zeros((len(named), feats.shape[1]), dtype=torch.bool, device=feats.device)
    for r, (_, _, v) in enumerate(named):
        look_at[r, list(v)] = True
    is_vis = torch.cat([(ids[:, :p] == image_token), torch.zeros_like(ids[:, p:], dtype=torch.bool)], 1)
    return (*out, look_loss(attention_rows(captured, look_q, offset=p), is_vis, look_q, look_at))


def _mixture(mix, cache) -> dict[int, tuple]:
    """Training's own conversations (`data.Example`s, encoded), grouped by their number of images as
    `data.batches` groups them (a batch's prompts share one prefix): per count k, the visual tokens of
    each conversation's images side by side ((n, k x tokens, dim), computed once), their encodings and
    their looks (per turn, over all k images)."""
    import torch

    groups: dict[int, list] = {}
    for ex in mix:
        groups.setdefault(len(ex.images), []).append(ex)
    out = {}
    for k, exs in sorted(groups.items()):
        x = [cache(np.concatenate([np.asarray(ex.images) for ex in exs[i:i + 32]])) for i in range(0, len(exs), 32)]
        x = torch.cat(x).view(len(exs), -1, x[0].shape[-1])
        out[k] = (x, [ex.enc for ex in exs], [ex.looks or ((),) * len(ex.turns) for ex in exs])
    return out


def _step_batch(rng, batch: int, train: tuple, groups: dict, mix_share: float) -> tuple:
    """One step's visual tokens, encodings, image per question (None: each its own) and looks (None: no
    attention loss): `mix_share` of the steps a batch of `_mixture`'s conversations with one number of
    images, else `batch` of `train`'s images (tokens, encodings, questions per image, images asked about,
    looks) with every question asked of each."""
    x, enc, asked, has, looks = train
    if groups and rng.random() < mix_share:
        counts = np.array([len(g[1]) for g in groups.values()])
        gx, genc, glooks = list(groups.values())[rng.choice(len(counts), p=counts / counts.sum())]
        idx = rng.choice(len(genc), size=min(batch, len(genc)), replace=False)
        return gx[idx], [genc[i] for i in idx], None, None if looks is None else [glooks[i] for i in idx]
    ims = has[rng.choice(len(has), size=min(batch, len(has)), replace=False)]
    idx = np.concatenate([asked[i] for i in ims])
    image = np.repeat(np.arange(len(ims)), [len(asked[i]) for i in ims])
    return x[ims], [enc[i] for i in idx], image, None if looks is None else [looks[i] for i in idx]


def _trainable(model, frozen: tuple[str, ...], train_only: str) -> list:
    """The parameters a decoder stage trains: none under `frozen`; with `train_only` (a regex), only those it
    names (e.g. not the query and key projections, where the decoder attends, which EGG's map follows)."""
    rx = re.compile(train_only or ".")
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith(frozen) and bool(rx.search(n)))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"train_only={train_only!r} leaves no decoder parameter to train, e.g. "
                         f"{next(n for n, _ in model.named_parameters() if not n.startswith(frozen))!r}")
    return params


def _attending(model, train: ReadingSet, look: float) -> str:
    """With `look` > 0, the decoder's attention set to record the rows its loss reads (`look.ROWS_MASKED`);
    the implementation it had, to give it back. Questions answered None in `train` teach where to look alone
    (taught with no attention loss, run 67's decoder stage moved EGG's map off the evidence)."""
    had = model.model.language_model.config._attn_implementation
    if look > 0:
        if not train.looks:
            raise ValueError("look > 0 needs a training set with looks (existence.full_view_set with a patch)")
        from .look import register

        model.model.language_model.set_attn_implementation(register(masked=True))
    return had


def train_decoder(model, processor, train: ReadingSet, test: ReadingSet, steps: int = 1500, batch: int = 32,
                  lr: float = 2e-4, seed: int = 0, eval_every: int = 500, projector: bool = False,
                  train_only: str = "", look: float = 0.0, mix=(), mix_share: float = 0.0, log=print) -> ScaleReading:
    """`model`'s decoder trained to answer each crop's question from its frozen visual tokens (the
    tower as it is, its output computed once; with `projector`, the projector trained too, as
    LLaVA's stage 2 and the recipes' decoder steps train it), scored per scale on `test` (step 0:
    the model as saved). Whether the decoder can learn to find and read the detail at 3x when it
    is taught nothing else, apart from what a recipe mixes in. A test answer counts when every one
    of its tokens is the argmax after the ones before it (what greedy decoding would answer).
    A step takes `batch` distinct training images with every question asked of each (a crop of
    `scale_set` or `training_set` has one; a full view of `existence.full_view_set`, all its facts).
    `train_only`: a regex naming the parameters that train; `look` > 0: training's attention loss (`_attending`).
    `mix`: training's own conversations (full views and crops, `_mixture`); that share of the steps take
    `batch` of them instead, all with one number of images (EGG and the oracle ask with a crop appended)."""
    import torch

    torch.manual_seed(seed)
    col, dev = Collator(processor), next(model.parameters()).device
    project = model.model.multi_modal_projector if projector else (lambda v: v)
    frozen = ("model.vision_tower",) if projector else ("model.vision_tower", "model.multi_modal")
    cache = lambda ims: torch.cat([v.half().cpu() for _, v in _tokens(model, col, ims, projector=not projector)])
    # a training set of several scales (`scale_set`) is read at all of them; each image encoded once
    scales = list(train.images.values())
    x, enc = cache(np.concatenate(scales) if len(scales) > 1 else scales[0]), _encoded(col, train) * len(scales)
    row = np.concatenate([train.shown() + k * len(scales[0]) for k in range(len(scales))])
    asked = [[] for _ in range(len(x))]
    for k, v in enumerate(row):
        asked[v].append(k)
    has = np.array([v for v, a in enumerate(asked) if a])  # images some question is about
    tests = {f: cache(ims) for f, ims in test.images.items()}
    test_enc = _encoded(col, test)

    def correct(feats, enc, image) -> np.ndarray:
        ok = []
        model.eval()
        with torch.no_grad():
            for k in range(0, len(enc), 50):
                im = image[k:k + 50]
                u, back = np.unique(im, return_inverse=True)
                logits, lab = _decoder_pass(model, col, project(feats[u].to(dev).float()), enc[k:k + 50], back)
                ok += [bool(((lg.argmax(-1) == lb) | (lb == -100)).all()) for lg, lb in zip(logits, lab)]
        model.train()
        return np.array(ok)

    def accuracy() -> tuple[dict, dict[float, np.ndarray]]:
        ok = {f: correct(feats, test_enc, test.shown()) for f, feats in tests.items()}
        return {f: _family_means(test, v) for f, v in ok.items()}, ok

    attention, params = _attending(model, train, look), _trainable(model, frozen, train_only)
    looks = [(v,) for v in train.looks] * len(scales) if look > 0 else None
    groups = _mixture(mix, cache) if mix_share > 0 else {}
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warm_cosine(steps))
    rng = np.random.default_rng(seed)
    acc, last = accuracy()
    curve, smooth, t0 = [{"step": 0, "loss": None, "seconds": 0.0, "accuracy": acc}], None, time.time()
    log("step 0 " + _line(acc))
    for s in range(1, steps + 1):
        feats, benc, image, blooks = _step_batch(rng, batch, (x, enc, asked, has, looks), groups, mix_share)
        logits, lab, *lf = _decoder_pass(model, col, project(feats.to(dev).float()), benc, image, blooks)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1))
        loss = loss + look * lf[0] if lf and lf[0] is not None else loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        if s % eval_every == 0 or s == steps:
            acc, last = accuracy()
            curve.append({"step": s, "loss": smooth, "seconds": time.time() - t0, "accuracy": acc})
            log(f"step {s}/{steps} loss {smooth:.3f} {(time.time() - t0) / s:.2f}s/step " + _line(acc))
    model.model.language_model.set_attn_implementation(attention)  # as it came
    # the training questions' accuracy, on a share of those with an answer
    seen = np.flatnonzero([a is not None for a in train.answers] * len(scales))[:400]
    train_acc = 100 * float(correct(x, [enc[i] for i in seen], row[seen]).mean())
    return ScaleReading(acc, **_described(test), train_accuracy=round(train_acc, 1), curve=curve,
                        settings={"steps": steps, "batch": batch, "lr": lr, "seed": seed, "projector": projector,
                                  "train_only": train_only, "look": look, "mix": len(mix), "mix_share": mix_share},
                        correct={f: ok.tolist() for f, ok in last.items()})
