"""Train the reference VLM on the procedural benchmark's train split.

The mixture matters more than the model (see docs/method.md section 8): a model that only ever
reads answers off evidence crops learns to ignore the full image, and then its entropy
gradient over the full image is noise. So every item yields several examples:

- full image alone -> answer (readable when the evidence is large, uncertain otherwise);
- full image + a jittered, rescaled crop around the evidence -> answer;
- full image + a random crop that may miss the evidence -> answer;
- full image + two crops (both evidence boxes for multi-evidence items, else evidence + random);
- full image alone, "where is the {target} ?" -> a coarse position (alone it did not teach where
  to look on the 8x8 model: 13% of text items for 11% chance; 28% with the supervision below);
- a window of the canvas around the evidence (2.5-12 x its side) as the only image, so the
  detail is readable in the first view when the window is small: the model learns to read a
  detail *where the named object is* in its first image, and an unreadable one still draws its
  gradient there.

Every question names an object (or two), and the position that predicts its answer is taught
where that object is: its attention in the decoder layers after the first, heads averaged, should
fall on the visual tokens that overlap the object's box, in any image (loss weight `look`).
Answers alone do not teach this in a CPU budget: the model learns to attend to objects of the
asked kind but not to the one whose colour the question names (measured on the previous model:
the answer's attention peaks on some sign for 95% of text items, on the named one for 25%), and
then the entropy gradient of a detail it cannot read has nothing to concentrate on. The saved
model is plain LLaVA; the supervision only shapes where it learnt to look. It shapes attention
directly, so attention-based baselines (ViCrop) profit from it more directly than EGG does.

A detail that no image of an example shows at READABLE_PX or more is asked but not taught: its
answer carries no loss. Taught, the only thing to learn there is the uniform guess, and a model
that has learnt to give it whatever it sees has an entropy gradient of zero (the maximum of the
entropy is a stationary point), so EGG's map of an unreadable detail would be noise.

Every kind with crops asks the item's own question half the time, so that a crop that does
not show the answer (the control's large region, a relation) is learnt to be ignored. Crops
range from the exact evidence box (squashed to the input square, as the oracle and
EGG's own boxes are) to a few times its size, so that a tight crop reads like training did.

A later stage continues a finished model (`init`, as LLaVA's stages continue each other): no warm-up,
the tower and projector as they were, and optionally `full_steps` on the full view alone first
(every turn of the conversations whose only image is the full view) before the mixture;
`train_only` limits the steps to the parameters it names (e.g. the decoder's query/key projections).
`init_vision` starts a new decoder (any depth or width) on a finished model's tower and projector,
with `vision_steps` 0 without the vision warm-up: a decoder experiment at 24x24 then skips its longest
stage; with more, the warm-up continues that tower (e.g. on full views too, `warmup_full`).

Run with `python -m egg.reference.train` (or `make train-reference`).
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .build import ReferenceConfig, build_model, build_processor, standardise_projector
from .checkpoint import cached_render, environment, load_checkpoint, load_initial, load_vision, save, save_checkpoint
from .config import TrainConfig, config_from_args
from .evaluation import eval_line, quick_eval
from .build import visual_tokens
from .data import Collator, Example, batches, full_views
from .look import attention_rows, capturing, look_loss, register
from .probes import AuxHeads, check_shape_pool


def cpu_seconds() -> float:
    """CPU time used by this process and its finished children (the rendering pool)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def only_matching(model, pattern: str) -> list:
    """Freeze every parameter whose name does not match ``pattern``; the ones left to train."""
    rx = re.compile(pattern)
    keep = []
    for name, q in model.named_parameters():
        q.requires_grad_(bool(rx.search(name)))
        if q.requires_grad:
            keep.append(q)
    if not keep:
        raise ValueError(f"train_only={pattern!r} matches no parameter name, e.g. "
                         f"{next(n for n, _ in model.named_parameters())!r}")
    return keep


def vision_rate(cfg: TrainConfig, s: int) -> float:
    """The warm-up's learning-rate factor after `s` steps: a linear start, then flat or a cosine to 0."""
    decay = 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.vision_steps))) if cfg.vision_decay else 1.0
    return min(1.0, (s + 1) / cfg.vision_warmup) * decay


def pretrain_vision(model, aux: AuxHeads, reads: list[Example], col, cfg, log, fulls: list[Example] = ()) -> list[dict]:
    """Warm up the vision tower and projector on tight reading crops, through the auxiliary heads only;
    with `cfg.warmup_full`, that share of each batch is full views (`fulls`), with colour and position
    targets where objects are 1-4 patches wide. Why: trained on crops alone, run 12's tower told a
    patch's key colour to a linear probe at the full view with a recall of 33% (crops: 93%). 1000
    more steps with half full views did not raise it (run 20: 32%; CHANGELOG, stop 39): the plain
    colour loss is met by "absent" there. With `cfg.colour_weight` 10, 400 steps from scratch reach
    53% (plain: 19%; CHANGELOG, stop 40)."""
    import torch

    params = list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
    opt = torch.optim.AdamW(params + aux.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: vision_rate(cfg, s))
    rng = np.random.default_rng(cfg.seed + 1)
    curve, smooth = [], None
    bs = cfg.batch_size * 2
    n_full = int(round(bs * cfg.warmup_full)) if len(fulls) else 0
    for step in range(1, cfg.vision_steps + 1):
        idx = rng.choice(len(reads), size=bs - n_full, replace=False)
        part = [reads[i] for i in idx]
        if n_full:  # no draw otherwise: a warm-up without full views keeps its random stream
            part += [fulls[i] for i in rng.choice(len(fulls), size=n_full, replace=False)]
        batch = {k: v.to(cfg.device) for k, v in col(part).items()}
        feats = visual_tokens(model, batch["pixel_values"])
        lc, lr, lp = aux.loss(feats, batch["colour_targets"], batch["read_targets"])
        # pope's objects, crops and full views alike, name their shape in every patch they cover: unlike
        # the read head's one answer per crop, this stays unambiguous where a crop shows several objects
        loss = lc + lr + (lp if cfg.position > 0 else 0)
        if aux.shape is not None:
            ls = aux.shape_loss(feats, batch["shape_targets"])
            loss = loss + cfg.shape_weight * ls
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        smooth = lr.item() if smooth is None else cfg.smoothing * smooth + (1 - cfg.smoothing) * lr.item()
        if step % 20 == 0:
            curve.append({"step": step, "read": smooth, "colour": lc.item(), "where": lp.item()}
                         | ({"shape": ls.item()} if aux.shape is not None else {}))
        if step % 100 == 0:
            log(f"vision warm-up step {step}/{cfg.vision_steps} read {smooth:.3f} colour {lc.item():.3f}")
    return curve


# The settings the vision warm-up depends on: a run that changes only the decoder's reuses it.
WARMUP_KEYS = ("seed", "items_per_family", "examples_per_item", "batch_size", "lr", "weight_decay", "aux",
               "vision_steps", "readable_px", "position", "vision_warmup", "window_max", "geometry", "read_pool",
               "look", "read_scale", "read_min_scale", "read_square", "read_spread",
               "vision_decay", "init_vision", "warmup_full", "colour_weight")


def cached_warmup(model, aux: AuxHeads, work: Path, cfg: TrainConfig, mcfg: ReferenceConfig, run, log) -> list[dict]:
    """The vision warm-up's result, from `work`/warmup.pt when one was saved with the same settings
    (a decoder experiment then starts in a minute instead of a quarter hour), else `run()`'s."""
    import torch

    key = {**{k: getattr(cfg, k) for k in WARMUP_KEYS}, "model": mcfg.to_dict()}
    if cfg.shape_weight:  # a key of its own only where it acts: earlier runs' caches stay valid
        key.update(shape_weight=cfg.shape_weight, shape_pool=cfg.shape_pool)
    path = work / "warmup.pt"
    if path.exists():
        state = torch.load(path, weights_only=False)
        if state["key"] == key:
            model.load_state_dict(state["model"])
            aux.load_state(state["aux"])
            log(f"vision warm-up loaded from {path}")
            return state["curve"]
    curve = run()
    torch.save({"key": key, "model": model.state_dict(), "aux": aux.state(), "curve": curve}, path)
    return curve


def answer_loss(logits, labels, per_example: bool = True):
    """The causal LM loss on the labelled answer tokens (the position before each predicts it), as
    transformers computes it when `per_example` is False; else every example's tokens averaged
    first, so a one-answer crop weighs as much as a many-turn conversation (`lm_per_example`)."""
    import torch.nn.functional as F

    lab = labels[:, 1:]
    tok = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), lab, ignore_index=-100, reduction="none")
    n = (lab != -100).sum(1)
    if not per_example:
        return tok.sum() / n.sum().clamp_min(1)
    has = n > 0
    return (tok.sum(1)[has] / n[has]).mean() if has.any() else tok.sum() * 0


def lm_step(model, batch, aux: AuxHeads | None, cfg: TrainConfig):
    """LLaVA's own forward, unrolled so the visual tokens are available to the auxiliary heads;
    with `cfg.look` > 0 also the loss on where each answer's position attends (module docstring)."""
    import torch

    ids = batch["input_ids"]
    feats = visual_tokens(model, batch["pixel_values"])
    emb = model.get_input_embeddings()(ids)
    is_vis = ids == model.config.image_token_id
    mask = is_vis.unsqueeze(-1).expand_as(emb)
    emb = emb.masked_scatter(mask, feats.reshape(-1, feats.shape[-1]).to(emb.dtype))
    want = cfg.look > 0 and len(batch["look_q"]) > 0
    # The collator pads on the right, so under causal attention no real token sees a pad and the
    # mask changes nothing but the kernel: without it torch keeps its causal flash attention,
    # 1.6-1.7x faster at 24x24 tokens per image (measured, 2 and 3 images). With `look_rows` the
    # attention loss reads its rows from the queries and keys the ROWS attention recorded.
    eager = want and not cfg.look_rows
    with capturing() as captured:  # (set in `train`: eager attention or ROWS when look > 0)
        out = model(inputs_embeds=emb, attention_mask=batch["attention_mask"] if eager else None,
                    labels=None if cfg.lm_per_example else batch["labels"], output_attentions=eager)
    loss = answer_loss(out.logits, batch["labels"]) if cfg.lm_per_example else out.loss
    parts = {"lm": loss.item()}
    if want:
        rows = out.attentions if eager else attention_rows(captured, batch["look_q"])
        lf = look_loss(rows, is_vis, batch["look_q"], batch["look_at"], cfg.look_heads)
        parts["look"] = lf.item()
        loss = loss + cfg.look * lf
    if aux is not None:
        lc, lr, lp = aux.loss(feats, batch["colour_targets"], batch["read_targets"])
        parts.update(colour=lc.item(), read=lr.item(), where=lp.item())
        loss = loss + lc + cfg.read_weight * lr + cfg.position * lp
        if aux.shape is not None:
            ls = aux.shape_loss(feats, batch["shape_targets"])
            parts["shape"] = ls.item()
            loss = loss + cfg.shape_weight * ls
    return loss, parts


def stage(pool: list[Example], steps: int, size: int, rng: np.random.Generator, name: str) -> list[tuple]:
    """`steps` batches of `pool` (as (pool, indices)), reshuffled as often as the stage needs."""
    plan: list[tuple] = []
    while len(plan) < steps:
        more = batches(pool, size, rng)
        if not more:  # fewer examples than a batch: the loop would never end
            raise ValueError(f"{name} needs batch_size={size} examples or more, got {len(pool)}")
        plan += [(pool, idx) for idx in more]
    return plan[:steps]


def check_pope_read_weight(weight: int) -> None:
    """Refuse a `pope_read_weight` that leaves pope's crops out (the trainer asks before rendering)."""
    if weight < 1:
        raise ValueError(f"pope_read_weight={weight} leaves pope's reading crops out: give 1 (the default) or more")


def reading_stage(reads: list[Example], data: list[Example], cfg: TrainConfig,
                  rng: np.random.Generator) -> tuple[list[tuple], int]:
    """The reading stage's batches, with `cfg.read_full` of each drawn from the full-view
    conversations of `data` (whose look loss keeps where the model attends while it learns to read;
    with `cfg.read_mix`, from all of `data`: read alone, runs 36-37 misread a crop appended to the
    full view), or with `cfg.read_alternate` that share of its batches; and how many of a batch are
    full views (a whole batch when alternating). Those are drawn from their own stream, so that a
    stage without them is the one earlier runs had."""
    full = data if cfg.read_mix else full_views(data)
    check_pope_read_weight(cfg.pope_read_weight)
    if cfg.pope_read_weight > 1:
        reads = reads + [r for r in reads if r.family == "pope"] * (cfg.pope_read_weight - 1)
    if cfg.read_alternate:
        return _alternating(reads, full, cfg, rng)
    n_full = int(round(cfg.batch_size * cfg.read_full))
    if not 0 <= n_full < cfg.batch_size:
        raise ValueError(f"read_full={cfg.read_full} leaves no reading crop in a batch of {cfg.batch_size}: give 0 to < 1")
    plan = stage(reads, cfg.read_steps, cfg.batch_size - n_full, rng, "read_steps")
    if not (n_full and plan):
        return plan, 0
    if len(full) < n_full:
        raise ValueError(f"read_full needs {n_full} full-view conversations or more, got {len(full)}")
    both, frng = reads + full, np.random.default_rng(cfg.seed + 2)
    return [(both, np.concatenate([idx, len(reads) + frng.choice(len(full), n_full, replace=False)]))
            for _, idx in plan], n_full


def _alternating(reads: list[Example], full: list[Example], cfg: TrainConfig,
                 rng: np.random.Generator) -> tuple[list[tuple], int]:
    """`reading_stage` with whole batches of full views: step k is one when floor(k * read_full)
    rises there, so they are spread evenly (every second step at 0.5)."""
    if not 0 < cfg.read_full < 1:
        raise ValueError(f"read_alternate needs 0 < read_full < 1 (the share of full-view batches), got {cfg.read_full}")
    is_full = [math.floor((k + 1) * cfg.read_full) > math.floor(k * cfg.read_full) for k in range(cfg.read_steps)]
    crops = iter(stage(reads, is_full.count(False), cfg.batch_size, rng, "read_steps"))
    views = iter(stage(full, is_full.count(True), cfg.batch_size, np.random.default_rng(cfg.seed + 2), "read_full"))
    return [next(views if f else crops) for f in is_full], (cfg.batch_size if any(is_full) else 0)


# ---------------------------------------------------------------- training loop
def train(cfg: TrainConfig) -> Path:
    """Render the data, warm up the vision tower, train the decoder, evaluate, save.

    One function on purpose (over 80 lines): like nanoGPT's train.py, the loop reads top to
    bottom with every setting coming from ``cfg``. Returns the output directory."""
    import torch

    if cfg.shape_weight > 0 and not cfg.aux:
        raise ValueError(f"shape_weight={cfg.shape_weight} needs the auxiliary heads (aux=1), which carry its probe; "
                         "give --aux 1 or --shape-weight 0")
    check_shape_pool(cfg.shape_pool)  # these two before the rendering, not after it
    check_pope_read_weight(cfg.pope_read_weight)
    if cfg.rewarm_steps and not (cfg.aux and cfg.init):
        raise ValueError(f"rewarm_steps={cfg.rewarm_steps} continues an --init model's tower through the "
                         "auxiliary heads: give --init and --aux 1, or --rewarm-steps 0")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    work = out.parent / "train_cache"  # data/train_cache for the default output
    work.mkdir(parents=True, exist_ok=True)
    logf = open(work / "train.log", "a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    mcfg = ReferenceConfig(**cfg.model)
    processor = build_processor(mcfg)
    if cfg.init:
        model, before = load_initial(cfg.init, mcfg.to_dict(), cfg.device)
        log(f"continuing {cfg.init} after its {before['steps']} decoder steps")
    else:
        model = build_model(mcfg, processor.tokenizer, seed=cfg.seed).to(cfg.device)
    if cfg.init_vision:
        if cfg.init:
            raise SystemExit("--init continues a whole model, --init-vision only its tower: give one of them")
        vision_from = load_vision(cfg.init_vision, mcfg.to_dict(), model)
        log(f"vision tower and projector from {cfg.init_vision}; a new decoder")
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, config {mcfg.to_dict()}")
    t_start, cpu_start = time.time(), cpu_seconds()
    data, reads = cached_render(cfg, mcfg, work, log)
    col = Collator(processor)
    aux = (AuxHeads(mcfg.text_hidden, len(processor.tokenizer), cfg.device, mcfg.image_size // mcfg.patch_size,
                    cfg.read_pool, cfg.colour_weight, cfg.shape_weight > 0, cfg.shape_pool) if cfg.aux else None)
    params = list(model.parameters()) + (aux.parameters() if aux else [])
    record = {"config": {**cfg.__dict__, "model": mcfg.to_dict()}, "loss": [], "eval": []}
    full = full_views(data)
    single = [r for r in reads if r.kind == "read"]  # the tower warms up on crops alone (not `read_pair`)
    warm = aux is not None and cfg.vision_steps > 0 and not cfg.init
    if warm:  # from scratch, or continuing `init_vision`'s tower
        record["vision_warmup"] = cached_warmup(model, aux, work, cfg, mcfg,
                                                lambda: pretrain_vision(model, aux, single, col, cfg, log, full), log)
    if cfg.init:
        record["continues"] = before["config"]
    if cfg.rewarm_steps and not (cfg.resume and (work / "resume.pt").exists()):  # the checkpoint holds its result
        # the tower learns again on the crops, before the decoder meets its new tokens
        record["rewarm"] = pretrain_vision(model, aux, single, col, replace(cfg, vision_steps=cfg.rewarm_steps), log, full)
    if cfg.init_vision:
        record["vision_from"] = vision_from["config"]
    if cfg.freeze_vision:  # no graph through the tower: its activations are not kept for a backward
        model.model.vision_tower.requires_grad_(False)
        params = [q for q in params if q.requires_grad]
    if cfg.train_only:  # e.g. the decoder's query/key projections: where it attends, not what it reads
        params = only_matching(model, cfg.train_only) + (aux.parameters() if aux else [])
    if cfg.freeze_vision and not cfg.init and (warm or not cfg.init_vision):  # a saved one is standardised
        shift, spread = standardise_projector(model, col(single[:64])["pixel_values"].to(cfg.device))
        log(f"projector standardised on the frozen tower's features (offset {shift:.1f}, spread {spread:.2f})")
    rng = np.random.default_rng(cfg.seed)
    # Stages: optionally the reading crops alone (one image each); then single-question conversations
    # whose answer is readable (in an appended crop or a small window); then the full mixture.
    plan, n_full = reading_stage(reads, data, cfg, rng)
    crops = plan[0][0] if plan else reads
    if cfg.read_steps:
        share = f"{cfg.read_full:.0%} of its batches" if cfg.read_alternate else f"{n_full} of each batch's {cfg.batch_size}"
        paired = len(reads) - len(single)
        log(f"reading stage: {cfg.read_steps} steps on {len(reads)} reading crops"
            + (f", {paired} of them beside the full view and another crop" if paired else ", one image each")
            + (f", pope's {sum(r.family == 'pope' for r in reads)} {cfg.pope_read_weight} times each in the pool"
               if cfg.pope_read_weight > 1 else "")
            + (f", {share} {'mixture' if cfg.read_mix else 'full-view'} conversations" if n_full else ""))
    plan += stage(full, cfg.full_steps, cfg.batch_size, rng, "full_steps")
    if cfg.full_steps:
        log(f"full-view stage: {cfg.full_steps} steps on {len(full)} conversations about the full view")
    first = [replace(ex, turns=ex.turns[:1], looks=ex.looks[:1], enc=None, untrained=()) for ex in data
             if ex.kind in ("evidence", "two", "window") and 0 not in ex.untrained]
    plan += [(first, idx) for idx in batches(first, cfg.batch_size, rng)][: int(cfg.curriculum * len(data) / cfg.batch_size)]
    for _ in range(cfg.epochs):
        plan += [(data, idx) for idx in batches(data, cfg.batch_size, rng)]
    if cfg.max_steps > 0:
        plan = plan[: cfg.max_steps]
    total = len(plan)
    if not 0 <= cfg.stop_step <= total:
        raise SystemExit(f"--stop-step {cfg.stop_step}: this run plans {total} decoder steps; give 0 (all of them) "
                         f"or a step within them")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    # The budget is CPU time (max_minutes on `threads` cores): a run sharing the machine with
    # other jobs gets the same amount of computation, only later.
    budget = max(60.0, cfg.max_minutes * 60 * cfg.threads - (cpu_seconds() - cpu_start))
    cpu_train = cpu_seconds()

    def progress(s: int) -> float:
        """Fraction of training done, by steps or by the CPU-time budget, whichever is further
        (by steps alone with max_steps, so that the schedule does not depend on the machine)."""
        if cfg.max_steps > 0:
            return min(1.0, s / total)
        return min(1.0, max(s / total, (cpu_seconds() - cpu_train) / budget))

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * progress(s))))
    log(f"{total} steps planned, {budget / 60:.1f} CPU-min left for them")
    if cfg.look > 0:  # attention weights for the loss: eager's, or SDPA's recorded queries and keys
        model.model.language_model.set_attn_implementation(register() if cfg.look_rows else "eager")
    smooth, done = None, 0
    ckpt = work / "resume.pt"

    def periodic_eval(step: int) -> None:
        ev = quick_eval(model, processor, cfg.eval_items, cfg.seed, mcfg.image_size, cfg.geometry)
        record["eval"].append({"step": step, **ev})
        log("eval " + eval_line(ev))
        record.update(steps=step, finished=False, minutes=(time.time() - t_start) / 60)
        save(model, processor, out, record)
        save_checkpoint(ckpt, model, aux, opt, sched, record, smooth, step)

    if cfg.resume and ckpt.exists():
        record, smooth, done = load_checkpoint(ckpt, record["config"], model, aux, opt, sched)
        log(f"resumed from {ckpt} at step {done}/{total}")
        if cfg.eval_every and done % cfg.eval_every == 0 and not (record["eval"] and record["eval"][-1]["step"] == done):
            periodic_eval(done)  # interrupted during that step's evaluation
    elif cfg.resume:
        log(f"no checkpoint at {ckpt}: starting from step 0")
    record.setdefault("environment", []).append(environment(done))  # one entry per process that trains
    model.train()
    step = done
    t_train = time.time()  # seconds per step count only the steps this process runs (a resume ran fewer)
    end = cfg.stop_step or total  # the schedule still plans `total` steps
    for step, (pool, idx) in enumerate(plan[done:end], start=done + 1):
        batch = col([pool[i] for i in idx])
        batch = {k: v.to(cfg.device) for k, v in batch.items()}
        loss, parts = lm_step(model, batch, aux, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        smooth = dict(smooth or {})  # a key may start late: reading crops have no look loss
        for k, v in parts.items():
            smooth[k] = cfg.smoothing * smooth[k] + (1 - cfg.smoothing) * v if k in smooth else v
        if step % 20 == 0:
            phase = {id(reads): "crop", id(crops): "crop", id(full): "full", id(first): "read"}.get(id(pool), "mix")
            record["loss"].append({"step": step, **{k: float(v) for k, v in smooth.items()},
                                   "lr": sched.get_last_lr()[0], "phase": phase})
        if step % 100 == 0:
            log(f"step {step}/{total} " + " ".join(f"{k} {v:.3f}" for k, v in smooth.items())
                + f" {(time.time() - t_train) / (step - done):.2f}s/step lr {sched.get_last_lr()[0]:.2e}")
        if cfg.eval_every and step % cfg.eval_every == 0:
            # the steps are kept before the evaluation too: one interrupted there loses none of them
            save_checkpoint(ckpt, model, aux, opt, sched, record, smooth, step)
            periodic_eval(step)
        if progress(step) >= 1.0 and step < total:
            log(f"CPU-time budget of {cfg.max_minutes} min x {cfg.threads} cores reached at step {step}/{total}; stopping")
            break
    if step == end < total:
        log(f"stopped at step {step}/{total} (--stop-step)")
    if not (record["eval"] and record["eval"][-1]["step"] == step):  # else the last periodic eval is the final one
        ev = quick_eval(model, processor, cfg.eval_items, cfg.seed, mcfg.image_size, cfg.geometry)
        record["eval"].append({"step": step, **ev})
    log("final eval " + eval_line({f: v for f, v in record["eval"][-1].items() if f != "step"}))
    record.update(steps=step, finished=True, minutes=(time.time() - t_start) / 60)
    record["cpu_minutes"] = (cpu_seconds() - cpu_start) / 60
    save(model, processor, out, record)
    ckpt.unlink(missing_ok=True)
    log(f"saved to {out} after {record['minutes']:.1f} min")
    return out


def main(argv=None) -> None:
    train(config_from_args(argv))


if __name__ == "__main__":
    main()
