"""`egg.reference.train`'s settings: the dataclass every run is described by (and saved with, in
its `training_log.json`), the named presets, and the command line that makes one."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

from .data import READABLE_PX, WINDOW_SCALE


@dataclass
class TrainConfig:
    out: str = "data/reference"
    seed: int = 1  # seed 0 did not learn to bind in 3 CPU runs (README, "Why the model did not look")
    items_per_family: int = 1000
    examples_per_item: int = 4
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 150
    eval_every: int = 0  # > 0: a quick val eval every this many steps (0: only at the end)
    eval_items: int = 30
    threads: int = 2
    workers: int = 2
    max_minutes: float = 36.0  # of `threads` CPU cores: counted in CPU time, not wall time
    max_steps: int = 1400  # > 0: exactly this many decoder steps, no time budget (bit-reproducible);
    # 0: as many as `max_minutes` of CPU time allow
    # > 0: end after this step of the planned schedule, its learning rate as planned: how a run that was
    # stopped early is replayed (run 24 is step 750 of 1000), the model then saved as finished
    stop_step: int = 0
    device: str = "cpu"
    aux: int = 1
    vision_steps: int = 1500
    curriculum: float = 0.3
    readable_px: float = READABLE_PX  # 0: teach every answer, readable or not
    # > 0: pope's shapes are taught where shown this large instead (they are whole objects, seen at
    # the full view, which a model must do to answer pope there)
    pope_readable_px: float = 0.0
    pope_weight: int = 1  # pope's items yield this many times `examples_per_item` (FAMILY_WEIGHT's role)
    look: float = 3.0  # weight of the attention-on-the-named-object loss (0: none)
    look_detail: int = 0  # 1: a turn that reads a detail looks at it (the panel, not the sign) where it is readable
    look_heads: int = 0  # the first this many heads of each layer carry it (0: all)
    # 1: the loss's attention rows from queries and keys recorded under SDPA (egg.reference.look,
    # 2.8x faster a step at 24x24 tokens); 0: eager attention, as the committed 8x8 model was trained
    look_rows: int = 0
    position: float = 0.1  # weight of the row/column probe on the visual tokens (0: none; the vision warm-up uses 1)
    read_weight: float = 0.5  # weight of the glyph-reading probe in the decoder steps' auxiliary loss
    # > 0: weight of a probe in the auxiliary loss (warm-up, rewarm and decoder steps) that reads, in every
    # patch a pope object covers, its shape (`probes.shape_targets`); pope's examples are then rendered with
    # those targets (the read head reads one answer per crop, and a pope crop 3-4x the object's side shows
    # another object on 79-97% of test items). In 500 rewarm steps its loss stayed at the labels' prior
    # (CHANGELOG, stop 62), as in run 55's decoder steps (stop 60)
    shape_weight: float = 0.0
    # "patch": that probe reads each patch; "object": each image's cells of one shape, pooled by `read_pool`.
    # Pooled, 500 rewarm steps taught the tower pope's shapes where the full view shows them (object-cell
    # probe 67-78% at 4-8x the object's side, against 36-56% before; CHANGELOG, stop 63)
    shape_pool: str = "patch"
    vision_warmup: int = 100  # learning-rate warm-up steps of the vision tower's pretraining
    vision_decay: int = 0  # 1: after its warm-up, the tower's learning rate falls to 0 along a cosine
    betas: tuple = (0.9, 0.98)  # AdamW betas of the decoder steps
    grad_clip: float = 1.0  # gradient-norm clip of the decoder steps
    smoothing: float = 0.95  # exponential smoothing of the logged losses
    window_max: float = WINDOW_SCALE[1]
    geometry: str = "v1"  # the benchmark geometry the training items are drawn in (egg.synthetic.Geometry)
    read_pool: str = "mean"  # how the glyph-reading probe pools a crop's visual tokens ("mean" or "max")
    freeze_vision: int = 0  # 1: the decoder steps leave the vision tower as its warm-up made it (LLaVA's stage 2)
    read_steps: int = 0  # decoder steps on the warm-up's reading crops, one image each, before the curriculum
    read_scale: float = 2.0  # the warm-up's reading crops are 1 to this many times the evidence's side
    # ... and at least this many times it: run 41's tower held the detail at 3x, its decoder did not
    # read it there (CHANGELOG, stop 50)
    read_min_scale: float = 1.0
    # 1: the reading crops are square, as notebook 09's crop3x is cut, not of a random aspect resized to a square
    read_square: int = 0
    # where the object is in a reading crop: anywhere (1), or within this share of the room around it of
    # the crop centred on it (0: centred). Fitted on crops anywhere, no reader read a 3x crop centred on the
    # object as well as one fitted on centred crops did (CHANGELOG, stops 51 and 52).
    read_spread: float = 1.0
    # pope's reading crops come this many times in the reading stage's pool: at 1, pope is one family of eight
    # there, and run 58's 400 steps read pope's shapes at 4-8x on 33-62% of objects where 500 steps of pope
    # crops alone read 56-75% (CHANGELOG, stop 63). At 8 (run 59), pope's answers did not move (stop 64)
    pope_read_weight: int = 1
    read_own: int = 0  # 1: a reading crop of a multiple-choice item's evidence asks its own question (`reading_crops`)
    # share of reading crops that come as EGG appends them: the full view, then the evidence's crop and
    # another object's, in random order (run 49: a second crop misled the reader of off-centre crops)
    read_pair: float = 0.0
    # share of each reading-stage batch that is full-view conversations (with the look loss): read
    # alone, run 26's crops undid run 24's binding (CHANGELOG, stop 43)
    read_full: float = 0.0
    # 1: the full views come as whole batches, that share of the stage's steps spread evenly among
    # the crops' batches, instead of a share of every batch (mixed within a batch, the crops were
    # not read even where they trained: CHANGELOG, stop 44)
    read_alternate: int = 0
    read_mix: int = 0  # 1: those batches from the whole mixture (crops appended too), not the full view alone
    # 1: each example's answers weigh the same in the language-model loss (their tokens averaged, then
    # the examples); 0: each answer token does, as transformers' own loss. A full-view conversation
    # has several turns and a reading crop one, so mixed into a token mean the crops weigh little.
    lm_per_example: int = 0
    resume: int = 0  # 1: continue from the last checkpoint of an interrupted run with the same settings
    init: str = ""  # a finished model to continue from (its tower, projector and reading kept: no warm-up)
    # with `init`: this many more warm-up steps (tower and projector through the auxiliary heads) before
    # the decoder's. The saved tower read pope's shapes only where the object fills the crop (88% at 1x,
    # 29% at 4x); one trained on such crops from scratch read 46% at 4x after 500 steps (CHANGELOG, stop 61)
    rewarm_steps: int = 0
    init_vision: str = ""  # a finished model whose tower and projector a new decoder starts on (the
    # warm-up then continues them for `vision_steps`; 0: no warm-up)
    warmup_full: float = 0.0  # share of each warm-up batch that is an item's full view (colour and position only)
    # weight of a present key colour against an absent one in the colour loss (BCE's pos_weight): at
    # 24x24 a full view's colour targets are mostly absent, and the plain loss is met by saying so
    colour_weight: float = 1.0
    full_steps: int = 0  # decoder steps on the full view alone, every turn, before the rest (CHANGELOG stop 31)
    train_only: str = ""  # a regex: the decoder steps update only the model parameters whose names match it
    model: dict = field(default_factory=dict)


# LLaVA-1.5's geometry (336 px, patch 14: 24x24 tokens), narrower and shallower than the 8x8
# model. Locating is taught by the data alone (positions as column/row tenths), not by a loss on
# attention, which trains exactly the signal the ViCrop baselines read. A detail is taught where
# its object's box is at least 48 px in some image (its glyph 19 px). The tower warms up on crops
# up to 4x the evidence; the decoder first reads them alone (`read_steps`): started on two images
# of 576 tokens each, it answered from the prior, with or without the oracle crop (CHANGELOG).
PRESETS: dict[str, dict] = {
    "llava15": dict(
        geometry="llava15", look=0.0, look_rows=1, readable_px=48.0, vision_steps=3000, items_per_family=600,
        examples_per_item=4, epochs=2, max_steps=3500, batch_size=16, warmup=100, eval_every=1000, eval_items=20,
        read_pool="max", freeze_vision=1, read_steps=2000, read_scale=4.0, vision_decay=1,
        model=dict(image_size=336, patch_size=14, vision_hidden=64, vision_layers=3, vision_heads=4,
                   text_hidden=128, text_layers=3, text_heads=4, max_positions=2048, position_init="sincos"),
    ),
}


def config_from_args(argv=None) -> TrainConfig:
    """The command line's TrainConfig: defaults, then ``--preset``'s settings, then the flags
    given explicitly (``--model-json`` overrides the preset's model fields one by one)."""
    from . import train  # its docstring is the command's help; it imports this module, so not at the top

    ap = argparse.ArgumentParser(description=train.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig()
    for k, v in d.__dict__.items():
        if isinstance(v, (int, float, str)):
            ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=argparse.SUPPRESS,
                            help=f"default {v!r}")
    ap.add_argument("--model-json", default="{}", help="ReferenceConfig overrides as JSON")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="start from these settings (flags given override them)")
    a = vars(ap.parse_args(argv))
    preset = dict(PRESETS.get(a.pop("preset"), {}))
    model = {**preset.pop("model", {}), **json.loads(a.pop("model_json"))}
    return TrainConfig(**{**preset, **a, "model": model})
