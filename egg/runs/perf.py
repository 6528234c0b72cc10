"""Performance figures: one EGG iteration against a plain forward, peak memory of
``ground`` against ``answer``, and the throughput of ``ground_batch`` against single calls,
on the reference model and on a random-init LLaVA of LLaVA-1.5's 24 x 24 tokens per image;
on a GPU also on a random model of a real shape (``random_shape``: LLaVA-1.5-7B's by default).

``python -m egg cost`` prints them after the per-method table of ``egg.runs.cost``; every
figure is measured in that one run (timings: the median of interleaved rounds).
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from .cost import CostReport


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (C++ code writes there directly)."""
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _median_ratio(fns: dict[str, Callable[[object], object]], items: Sequence, repeats: int) -> dict[str, float]:
    """Seconds per item of each ``fns[name](item)``: the median over ``repeats`` rounds that
    interleave the functions item by item (after one warm-up call each), mean over items."""
    for fn in fns.values():
        fn(items[0])
    times = {k: [[] for _ in items] for k in fns}
    for _ in range(int(repeats)):
        for i, it in enumerate(items):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(it)
                times[name][i].append(time.perf_counter() - t0)
    return {k: float(np.mean([np.median(x) for x in v])) for k, v in times.items()}


def iteration_cost(vlm, items: Sequence, repeats: int = 3) -> dict:
    """One EGG iteration's model work -- a forward and a backward pass to the visual
    embeddings (``relevance``) -- against one plain forward pass (no grad) over the same
    prompt (the original image and the question; embeddings computed beforehand)."""
    import torch

    from ..adapters import as_adapter
    from ..method.relevance import relevance

    a = as_adapter(vlm)
    prepared = []
    for it in items:
        p = a.prepare([it.image], it.question)
        prepared.append((p, a.visual_embeddings(p)))

    def plain(pv):
        with torch.no_grad():
            a.forward(*pv)

    t = _median_ratio({"forward": plain, "iteration": lambda pv: relevance(a, pv[0], visual_embeds=pv[1])},
                      prepared, repeats)
    return {**t, "ratio": t["iteration"] / t["forward"]}


def batch_throughput(vlm, items: Sequence, batch_size: int = 8, repeats: int = 3) -> dict:
    """``egg.ground`` one question at a time against ``egg.ground_batch`` with ``batch_size``
    questions per pass (paper defaults), on the same questions, in interleaved rounds;
    ``ratio`` = single seconds / batched seconds (throughput gain), and whether every
    answer and box agreed."""
    from ..method.batch import ground_batch
    from ..method.zoom import ground

    items = list(items)
    groups = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    single = [[ground(vlm, it.image, it.question) for it in g] for g in groups]
    batched = [ground_batch(vlm, [it.image for it in g], [it.question for it in g], batch_size=batch_size)
               for g in groups]
    same = all(a.answer == b.answer and a.boxes == b.boxes for s, bt in zip(single, batched) for a, b in zip(s, bt))
    t = _median_ratio({
        "single": lambda g: [ground(vlm, it.image, it.question) for it in g],
        "batched": lambda g: ground_batch(vlm, [it.image for it in g], [it.question for it in g],
                                          batch_size=batch_size),
    }, groups, repeats)
    n = len(items) / len(groups)
    return {"single_sec_per_q": t["single"] / n, "batched_sec_per_q": t["batched"] / n,
            "ratio": t["single"] / t["batched"], "same_results": bool(same), "batch_size": int(batch_size),
            "n_questions": len(items)}


@contextlib.contextmanager
def _numpy_outputs_owned() -> Iterator[None]:
    """``torch.from_numpy`` returns a torch-owned copy for the block. An image processor's
    pixels are numpy arrays handed to torch that way; the profiler sees only torch's own
    allocations, so they went uncounted (``answer``'s pixels were, the ones ``ground``
    assembles with ``torch.cat`` were not). On a GPU they are copied to the device and counted
    there; the copy makes the CPU figure count them too."""
    import torch

    share = torch.from_numpy
    torch.from_numpy = lambda array: share(array).clone()
    try:
        yield
    finally:
        torch.from_numpy = share


def tensor_peak_mb(fn: Callable[[], object]) -> float:
    """Peak memory (MB) of the tensors held while ``fn`` runs, above what was allocated
    before: the profiler's allocation and free events summed in time order, with arrays
    handed over from numpy (a processor's pixels) counted as torch tensors (as on a GPU,
    where they are copied to the device). Unlike the process's resident size it is exact and
    repeatable, and it does not depend on whether the C allocator gives freed blocks back."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    # The profiler's C++ side writes to stderr as it starts and stops, and once a process, with
    # a time stamp, when a block allocated before it started is freed under it (a notebook's
    # outputs would then change at every run), so the whole probe runs with stderr closed.
    with _quiet_fd2(), _numpy_outputs_owned():
        prof.start()
        try:
            fn()
        finally:
            prof.stop()
    now = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        now += e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        peak = max(peak, now)
    return peak / 2**20


def memory(vlm, items: Sequence) -> dict:
    """Peak memory of the base answer and of ``egg.ground`` at defaults, per question
    (the largest over ``items``): on a GPU the peak CUDA memory allocated (weights
    included); on the CPU the model's weights plus the peak of the tensors the call
    allocates (``tensor_peak_mb``). ``ratio`` = ground's over answer's;
    ``activation_ratio`` compares the memory above the weights alone. ``same_prompt``:
    answering over the images ``ground`` chose (the original and its crops, no grounding),
    and ``ratio_same_prompt`` ground's peak over that one: what grounding adds beyond the
    longer prompt its crops make."""
    import torch

    from ..adapters import as_adapter
    from ..api import answer
    from ..method.zoom import answer_with_crops, ground

    adapter = as_adapter(vlm)
    model = adapter.model
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    gpu = next(model.parameters()).is_cuda
    chosen = {}

    def grounded(it):
        chosen[id(it)] = ground(vlm, it.image, it.question).crops
    calls = {"answer": lambda it: answer(vlm, it.image, it.question), "ground": grounded,
             "same_prompt": lambda it: answer_with_crops(adapter, it.image, it.question, chosen[id(it)])}
    for fn in calls.values():  # warm-up: lazy initialisation is not the method's
        fn(items[0])
    out = {}
    for name, fn in calls.items():
        peaks = []
        for it in items:
            if gpu:
                torch.cuda.reset_peak_memory_stats()
                fn(it)
                peaks.append(torch.cuda.max_memory_allocated() / 2**20 - weights)
            else:
                peaks.append(tensor_peak_mb(lambda: fn(it)))
        out[name] = {"above_weights_mb": float(max(peaks)), "peak_mb": float(weights + max(peaks))}
    out["weights_mb"] = weights
    out["ratio"] = out["ground"]["peak_mb"] / out["answer"]["peak_mb"]
    out["ratio_same_prompt"] = out["ground"]["peak_mb"] / out["same_prompt"]["peak_mb"]
    a_extra = out["answer"]["above_weights_mb"]
    out["activation_ratio"] = out["ground"]["above_weights_mb"] / a_extra if a_extra > 0 else float("nan")
    out["measure"] = "cuda allocated" if gpu else "weights + tensors"
    return out


def random_llava(grid: int = 24, patch: int = 14, gradient_checkpointing: bool = False, seed: int = 0):
    """A random-init LLaVA of the reference's widths whose images are ``grid`` x ``grid``
    tokens (LLaVA-1.5's 24 x 24 at 336 px by default), built from a config: what a pass costs
    does not depend on the weights. Its answers are random tokens (it rarely stops early)."""
    from ..adapters import VLM
    from ..api import prepare_for_inference
    from ..reference.build import ReferenceConfig, build_model, build_processor

    cfg = ReferenceConfig(image_size=grid * patch, patch_size=patch, max_positions=max(512, 8 * grid * grid))
    proc = build_processor(cfg)
    model = prepare_for_inference(build_model(cfg, proc.tokenizer, seed=seed), "cpu", None, gradient_checkpointing)
    tag = ", gradient checkpointing" if gradient_checkpointing else ""
    return VLM.from_model(model, proc, source=f"random-init LLaVA, {grid}x{grid} tokens{tag}")


@dataclass(frozen=True)
class Shape:
    """Widths and depths of a LLaVA (a CLIP tower, a two-layer projector, a Llama decoder)."""

    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    vocab: int
    image_size: int = 336
    patch_size: int = 14
    max_positions: int = 4096


#: Real shapes, for the time and memory of a random model of them (``random_shape``); the
#: 7B one has llava-hf/llava-1.5-7b-hf's 7,063,427,072 parameters (tested on the meta device).
SHAPES = {
    "llava-1.5-7b": Shape(1024, 4096, 24, 16, 4096, 11008, 32, 32, 32064),
    "llava-1.5-13b": Shape(1024, 4096, 24, 16, 5120, 13824, 40, 40, 32064),
}


def shape_model(shape: Shape, image_token_id: int, special: dict | None = None):
    """A randomly initialised ``LlavaForConditionalGeneration`` of ``shape``, with LLaVA-1.5's
    choices (CLIP's quick GELU, the second-to-last tower layer's features, a GELU projector),
    built on the current default device and dtype."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
        num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
        image_size=shape.image_size, patch_size=shape.patch_size, projection_dim=768, hidden_act="quick_gelu")
    text = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.text_hidden, intermediate_size=shape.text_intermediate,
        num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_heads, max_position_embeddings=shape.max_positions, rms_norm_eps=1e-5,
        tie_word_embeddings=False, **(special or {}))
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=int(image_token_id),
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    return LlavaForConditionalGeneration(config)


def random_shape(shape: "str | Shape", device: str = "cpu", dtype=None, gradient_checkpointing: bool = False,
                 seed: int = 0, layers: int | None = None):
    """A random-init LLaVA of a real shape (a name of ``SHAPES`` or a ``Shape``), built on
    ``device`` in ``dtype`` (e.g. bfloat16) from a config, no download: the time and memory of
    a question do not depend on the weights. The processor is the reference's at the shape's
    image size (its small vocabulary is a subset of the model's). Its answers are random
    tokens; it rarely stops before ``max_new_tokens``, so its answers cost their maximum.
    ``layers``: keep only that many decoder layers (real widths on a machine too small for
    the real depth: a layer's cost ratios do not depend on how many follow it)."""
    import torch

    from ..adapters import VLM
    from ..api import prepare_for_inference
    from ..reference.build import IMAGE_TOKEN, ReferenceConfig, build_processor

    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; known: {sorted(SHAPES)}")
        name, shape = shape, SHAPES[shape]
    else:
        name = "custom shape"
    if layers is not None:
        if not 1 <= int(layers) <= shape.text_layers:
            raise ValueError(f"layers must be in [1, {shape.text_layers}] for {name}, got {layers}")
        name = f"{name}, {int(layers)} of its {shape.text_layers} decoder layers"
        shape = replace(shape, text_layers=int(layers))
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    proc = build_processor(ReferenceConfig(image_size=shape.image_size, patch_size=shape.patch_size,
                                           max_positions=shape.max_positions))
    tok = proc.tokenizer
    special = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialised where it runs: a 7B model never passes through CPU memory
            model = shape_model(shape, tok.convert_tokens_to_ids(IMAGE_TOKEN), special)
    finally:
        torch.set_default_dtype(old)
    model.generation_config.update(**special)
    model = prepare_for_inference(model, device, None, gradient_checkpointing)
    tag = ", gradient checkpointing" if gradient_checkpointing else ""
    return VLM.from_model(model, proc, source=f"random-init {name}, {str(dtype or old).replace('torch.', '')}{tag}")


#: The performance figures ``figures`` measures, in its order.
FIGURES = ("iteration", "memory", "batch")


def figures(vlm, items: Sequence, repeats: int = 3, batch_size: int = 8, which: Sequence[str] = FIGURES) -> dict:
    """The performance figures of one model (issue #19's list), each measured here in one
    run: one iteration over a plain forward, peak memory of ``ground`` over ``answer``, and
    batch throughput over single calls (``which``: a subset, for a model too slow for all)."""
    unknown = sorted(set(which) - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figures {unknown}; known: {list(FIGURES)}")
    items = list(items)
    measures = {
        "iteration": lambda: iteration_cost(vlm, items, repeats),
        "memory": lambda: memory(vlm, items),
        "batch": lambda: batch_throughput(vlm, items[: max(batch_size, len(items) - len(items) % batch_size)],
                                          batch_size, repeats),
    }
    return {name: measures[name]() for name in FIGURES if name in which}


def format_figures(name: str, f: dict, report: "CostReport | None" = None) -> str:
    """Plain-text lines for ``figures`` (and ``ground`` x ``answer`` from a ``run`` report)."""
    lines = [f"{name}:"]
    if report is not None:
        lines.append(f"  egg.ground (paper defaults) = {report.ratio('egg-full'):.2f} x egg.answer per question "
                     f"(wall time; CPU time {report.ratio('egg-full', 'cpu_sec_per_q'):.2f} x)")
    if "iteration" in f:
        it = f["iteration"]
        lines.append(f"  one iteration (forward + backward to the visual embeddings) = {it['ratio']:.2f} x a plain "
                     f"forward ({it['iteration'] * 1e3:.1f} ms vs {it['forward'] * 1e3:.1f} ms)")
    if "memory" in f:
        mem = f["memory"]
        lines.append(f"  peak memory: ground = {mem['ratio']:.2f} x answer ({mem['measure']}: "
                     f"{mem['ground']['peak_mb']:.1f} MB vs {mem['answer']['peak_mb']:.1f} MB, of which weights "
                     f"{mem['weights_mb']:.1f} MB; above the weights {mem['activation_ratio']:.2f} x); = "
                     f"{mem['ratio_same_prompt']:.2f} x answering over the images it chose "
                     f"({mem['same_prompt']['peak_mb']:.1f} MB)")
    if "batch" in f:
        b = f["batch"]
        lines.append(f"  batch of {b['batch_size']}: {b['ratio']:.2f} x the throughput of single calls "
                     f"({b['batched_sec_per_q']:.3f} vs {b['single_sec_per_q']:.3f} s/question, {b['n_questions']} "
                     f"questions; same answers and boxes: {b['same_results']})")
    return "\n".join(lines)


__all__ = ["tensor_peak_mb", "iteration_cost", "batch_throughput", "memory", "random_llava", "random_shape",
           "shape_model", "Shape", "SHAPES", "FIGURES", "figures", "format_figures"]
