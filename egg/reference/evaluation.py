"""Evaluation during training: validation accuracy at the full view and with the oracle crop,
whether the model places the named object (`egg.synthetic.checks.locating`), and whether its
entropy-gradient map peaks on it (`egg.synthetic.checks.binding`)."""
from __future__ import annotations

import numpy as np

from .. import synthetic as bench
from ..synthetic.core import GEOMETRY_ATTR
from .data import Collator, Example, _resize, oracle_crop


def quick_eval(model, processor, n: int, seed: int, size: int, geometry: str = "v1") -> dict:
    """Val accuracy per family: full image alone, and with the oracle crop(s) appended; and the share
    of its locating questions answered exactly at the full view (`egg.synthetic.checks.locating`):
    a model that cannot place the named object has no map that points at it. For the families that
    name one object among others of its kind, `by_kind`: the share of the first map's peaks on the
    named object among peaks on any object, against `kind_chance`, what a map of the kind alone
    gives (`checks.binding`; every 24x24 run before stop 42 stayed at it)."""
    import torch

    from ..adapters import VLM
    from ..synthetic import score
    from ..synthetic.checks import binding, binding_summary, locating

    col = Collator(processor)
    res = {}
    model.eval()
    for fam in bench.families():
        base, orc = [], []
        for it in bench.load(fam, "val", n, seed, geometry=geometry):
            W, H = it.image.size
            full = _resize(it.image, (0, 0, W, H), size)
            for crops, acc in (([], base), ([oracle_crop(b, (W, H)) for b in it.boxes], orc)):
                ims = np.stack([full] + [_resize(it.image, c, size) for c in crops])
                batch = col([Example(ims, [(it.question, "")], fam, "eval")])
                ids = batch["input_ids"].to(model.device)
                with torch.no_grad():
                    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                         pixel_values=batch["pixel_values"].to(model.device), do_sample=False)
                pred = processor.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
                acc.append(score(fam, pred, it))
        res[fam] = {"base": float(np.mean(base)), "oracle": float(np.mean(orc))}
    setattr(model.config, GEOMETRY_ATTR, geometry)  # the geometry `locating` draws its items in
    trained = [p.requires_grad for p in model.parameters()]
    vlm = VLM.from_model(model, processor)  # an adapter freezes the model's parameters: restored below
    for fam, share in locating(vlm, n=max(2, n // 4), seed=seed).groupby("family").exact.mean().items():
        res[fam]["locate"] = float(share)
    for row in binding_summary(binding(vlm, n=n, seed=seed), n_boot=1).itertuples():
        res[row.family].update(by_kind=float(row.by_kind), kind_chance=float(row.kind_chance))
    for p, flag in zip(model.parameters(), trained):
        p.requires_grad_(flag)
    model.train()
    return res


def eval_line(ev: dict) -> str:
    """`quick_eval`'s result as the log prints it: family:base/oracle, the locating shares, then
    binding's family:by_kind/kind_chance."""
    return (" ".join(f"{f}:{v['base']:.2f}/{v['oracle']:.2f}" for f, v in ev.items()) + " locate "
            + " ".join(f"{f}:{v['locate']:.2f}" for f, v in ev.items() if "locate" in v) + " bind "
            + " ".join(f"{f}:{v['by_kind']:.2f}/{v['kind_chance']:.2f}" for f, v in ev.items() if "by_kind" in v))


def colour_probe(model, processor, geometry: str, n: int = 300, view: str = "full", family: str = "text",
                 seed: int = 0, steps: int = 1500, strong: float = 0.25, layer: int | None = None) -> dict:
    """How well a linear probe reads each patch's key colours off the visual tokens, on `n` train
    items' full views or crops around their evidence (`view`: "full" or "crop", up to 4x its side):
    fitted on two thirds of the images to the warm-up's targets (`data.patch_colours`: 2 pixels of
    the colour make a patch positive), scored on the rest, over all positives and over the patches
    that the colour fills to at least `strong` (an object's body, not its edge). `layer` probes the
    tower's tokens after that many layers instead of the projector's output (`build.tower_tokens`):
    where along the way a colour is lost.

    Why: a decoder can bind "the blue sign" only to tokens that say blue (CHANGELOG, stop 39)."""
    import torch

    from .build import check_tower_layer, tower_tokens, visual_tokens
    from .data import crop_around
    from .probes import patch_colour_pixels

    if view not in ("full", "crop"):
        raise ValueError(f"view must be 'full' or 'crop', got {view!r}")
    if layer is not None:  # a bad layer is refused before rendering anything
        check_tower_layer(model, layer)
    col = Collator(processor)
    size = processor.image_processor.size["height"]
    ims = []
    for i, it in enumerate(bench.load(family, "train", n, seed, geometry=geometry)):
        W, H = it.image.size
        box = (0, 0, W, H) if view == "full" else crop_around(it.boxes[0], (W, H), np.random.default_rng(i), (1.0, 4.0))
        ims.append(_resize(it.image, box, size))
    ims = np.stack(ims)
    with torch.no_grad():
        feats = torch.cat([visual_tokens(model, col.pixels(ims[k:k + 32])) if layer is None
                           else tower_tokens(model, col.pixels(ims[k:k + 32]), layer) for k in range(0, n, 32)])
    pixels = torch.from_numpy(patch_colour_pixels(ims, col.patch))
    y, body = (pixels >= 2).float(), pixels >= max(2, int(strong * col.patch ** 2))
    cut = 2 * n // 3
    torch.manual_seed(seed)
    probe = torch.nn.Linear(feats.shape[-1], y.shape[-1])
    opt = torch.optim.Adam(probe.parameters(), 1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(feats[:cut]), y[:cut])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred, true, body = probe(feats[cut:]) > 0, y[cut:] > 0, body[cut:]

    def share(hit, of) -> float:
        return int(hit.sum()) / max(1, int(of.sum()))

    return {"view": view, "n_images": n - cut, "positive_patches": int(true.sum()), "body_patches": int(body.sum()),
            "recall": share(pred & true, true), "precision": share(pred & true, pred),
            "body_recall": share(pred & body, body)}
