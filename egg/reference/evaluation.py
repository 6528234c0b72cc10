"""Evaluation during training: validation accuracy at the full view and with the oracle crop, and
whether the model places the named object (`egg.synthetic.checks.locating`)."""
from __future__ import annotations

import numpy as np

from .. import synthetic as bench
from ..synthetic.core import GEOMETRY_ATTR
from .data import Collator, Example, _resize, oracle_crop


def quick_eval(model, processor, n: int, seed: int, size: int, geometry: str = "v1") -> dict:
    """Val accuracy per family: full image alone, and with the oracle crop(s) appended; and the share
    of its locating questions answered exactly at the full view (`egg.synthetic.checks.locating`):
    a model that cannot place the named object has no map that points at it."""
    import torch

    from ..adapters import VLM
    from ..synthetic import score
    from ..synthetic.checks import locating

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
    for p, flag in zip(model.parameters(), trained):
        p.requires_grad_(flag)
    model.train()
    return res


def eval_line(ev: dict) -> str:
    """`quick_eval`'s result as the log prints it: family:base/oracle, then the locating shares."""
    return (" ".join(f"{f}:{v['base']:.2f}/{v['oracle']:.2f}" for f, v in ev.items()) + " locate "
            + " ".join(f"{f}:{v['locate']:.2f}" for f, v in ev.items() if "locate" in v))
