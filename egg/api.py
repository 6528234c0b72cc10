"""The public functions: load a model, answer, ground (EGG), and the baselines.

>>> import egg
>>> vlm = egg.load_model()                                # the embedded reference VLM
>>> egg.answer(vlm, "photo.png", "what word is on the sign?")
>>> g = egg.ground(vlm, "photo.png", "what word is on the sign?")
>>> g.answer, g.boxes, g.plot()
>>> egg.vicrop(vlm, "photo.png", "what word is on the sign?", variant="rel-att")

``load_model("llava-hf/llava-1.5-7b-hf")`` loads a Hub model (from the local Hugging Face
cache when offline); any transformers VLM with a registered adapter works
(``egg.adapters.registered()``: LLaVA-1.5, LLaVA-1.6/NeXT, Qwen2.5-VL, Qwen3-VL, InternVL3/3.5),
the adapter being chosen from the checkpoint's config. On a GPU:
``load_model(id, dtype="bf16", attn_implementation="sdpa", device_map="auto",
gradient_checkpointing=True)``.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from .adapters import VLM, adapter_class, as_adapter
from .baselines import oracle, random_box, vicrop
from .images import check_question, load_image
from .method import checks
from .method.result import Grounding, Iteration
from .method.zoom import ground

#: The committed models (save_pretrained of each model and its processor): <repo>/data.
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
#: Where ``load_model()`` looks for the embedded reference model: the 24x24 one at LLaVA-1.5's
#: geometry (issue #16, run 48), which ``make train-reference`` retrains.
REFERENCE_DIR = DATA_DIR / "reference-llava15-large-pope"
#: The first testbed's 8x8 model (96 px input, benchmark geometry v1), kept beside it:
#: ``make train-reference RECIPE=v1`` retrains it.
REFERENCE_V1_DIR = DATA_DIR / "reference"


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _resolve_dtype(dtype, device: str):
    import torch

    if dtype is None:
        return torch.float32 if device == "cpu" else torch.bfloat16
    if isinstance(dtype, str):
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                    "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                    "float64": torch.float64}[dtype]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}") from None
    return dtype


def _model_kwargs(dtype, attn_implementation=None, device_map=None, **extra) -> dict:
    kw = {"dtype": dtype}
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    if device_map is not None:
        kw["device_map"] = device_map
    kw.update(extra)
    return kw


def prepare_for_inference(model, device: str = "cpu", device_map=None, gradient_checkpointing: bool = False):
    """What ``load_model`` does to every model it loads (device, eval mode, optional gradient
    checkpointing), for models built in code, e.g. a random model of a real shape."""
    if device_map is None:
        model.to(device)
    model.eval()
    if gradient_checkpointing:
        # Checkpointing only acts on layers marked as training; the adapter marks the decoder
        # layers (not their dropout) while it takes a gradient (``VLMAdapter.memory_saving``).
        kw = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        model.eval()
    return model


def _check_loading(info: dict, where: str, strict: bool) -> None:
    """Refuse weights that did not load as saved: a missing tensor would stay at its random
    initialisation, and the model would answer garbage without an error."""
    problems = {k: sorted(map(str, info.get(k) or [])) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems and strict:
        parts = [f"{len(v)} {k.replace('_', ' ')} (e.g. {', '.join(v[:3])})" for k, v in problems.items()]
        raise ValueError(f"the checkpoint in {where} does not match its model: {'; '.join(parts)}. Those weights "
                         "would be random. Fix the checkpoint, or pass load_model(..., strict=False) to load anyway")
    if problems:
        warnings.warn(f"loading {where} with strict=False: {sorted(problems)} present; those weights are random",
                      stacklevel=3)


def _load_local(path: Path, device: str, dtype, device_map=None, gradient_checkpointing=False, strict=True,
                **kw) -> VLM:
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a model checkpoint: it has no config.json. Point load_model(path_or_id=...) "
            "at a directory written by save_pretrained (model + processor)."
        )
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise ValueError(f"cannot read the model config in {str(path)!r} (corrupt checkpoint?): {e}") from e

    class _Probe:  # adapter_class only needs .config
        pass

    probe = _Probe()
    probe.config = config
    adapter_class(probe)  # raises a clear NotImplementedError for unsupported families early
    try:
        model, info = AutoModelForImageTextToText.from_pretrained(
            path, output_loading_info=True, **_model_kwargs(dtype, device_map=device_map, **kw))
        processor = AutoProcessor.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        hint = ""
        if "torchvision" in str(e).lower() or "VIDEO_PROCESSOR" in str(e):
            hint = (" (this family's processor includes a video processor, which needs torchvision: "
                    "`pip install torchvision` matching your torch)")
        raise ValueError(
            f"cannot load the checkpoint in {str(path)!r} (missing or corrupt files?){hint}: {type(e).__name__}: {e}"
        ) from e
    _check_loading(info, repr(str(path)), strict)
    prepare_for_inference(model, device, device_map, gradient_checkpointing)
    return VLM.from_model(model, processor, source=str(path))


def load_model(path_or_id: str | os.PathLike | None = None, device: str | None = None, dtype=None, *,
               attn_implementation: str | None = None, device_map=None, gradient_checkpointing: bool = False,
               strict: bool = True, **model_kwargs) -> VLM:
    """Load a VLM (model + processor + adapter), in eval mode with frozen parameters.

    path_or_id: None = the embedded reference model at ``REFERENCE_DIR``
        (<repo>/data/reference-llava15-large-pope, 24x24 tokens per image); a local
        directory written by ``save_pretrained``; or a Hugging Face Hub id (e.g.
        "llava-hf/llava-1.5-7b-hf"), taken from the local cache, downloaded only when the Hub
        is reachable and not disabled (HF_HUB_OFFLINE).
    device: "cpu", "cuda", ... (None: cuda if available, else cpu).
    dtype: torch dtype or name (None: float32 on cpu, bfloat16 on a GPU).
    attn_implementation: passed to ``from_pretrained`` ("sdpa" is transformers' default where
        supported; "eager" everywhere; "flash_attention_2" if installed). ViCrop's attention
        maps switch the decoder to eager for their call only, whatever is set here.
    device_map: passed to ``from_pretrained`` (e.g. "auto" to spread a large model over
        GPUs); the model is then not moved to ``device``.
    gradient_checkpointing: recompute decoder activations in the backward pass (saves
        memory on long inputs: many crops / high-resolution tiles; costs one extra forward).
    strict: refuse a checkpoint whose tensors do not match the model (missing, unexpected
        or mis-shaped weights would be random); False loads it with a warning.
    model_kwargs: any other ``from_pretrained`` keyword (e.g. ``quantization_config``).
    The model family (and so the adapter) is read from the checkpoint's config
    (``config.json``: config class / ``model_type``), never from its name.

    Errors name what is missing: FileNotFoundError for a missing local checkpoint, and for
    a Hub id that is not cached while offline (with the command to fetch it and the
    parameter to point at a local copy); ValueError for a corrupt checkpoint.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    dtype = _resolve_dtype(dtype, device)
    extra = dict(model_kwargs, attn_implementation=attn_implementation, device_map=device_map,
                 gradient_checkpointing=gradient_checkpointing, strict=strict)
    if path_or_id is None:
        if not REFERENCE_DIR.is_dir():
            raise FileNotFoundError(
                f"the reference model is not at {str(REFERENCE_DIR)!r}. Train it with "
                "`make train-reference` (it saves there), or pass load_model(path_or_id=...) "
                "a local checkpoint directory or a Hugging Face model id."
            )
        return _load_local(REFERENCE_DIR, device, dtype, **extra)
    path = Path(os.path.expanduser(str(path_or_id)))
    if path.is_dir():
        return _load_local(path, device, dtype, **extra)
    text = str(path_or_id)
    if path.is_file():
        raise ValueError(f"{text!r} is a file; load_model wants the checkpoint directory that holds config.json "
                         f"and the weights (here perhaps {str(path.parent)!r})")
    # Hub ids are "name" or "owner/name"; anything else that is not a directory is a bad path.
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if looks_local or path.exists():
        raise FileNotFoundError(f"model checkpoint directory not found: {text!r}")
    if not _HUB_ID.fullmatch(text):
        raise ValueError(f"{text!r} is neither a local directory nor a valid Hugging Face id (\"name\" or "
                         "\"owner/name\", letters, digits, '-', '_', '.'; e.g. 'llava-hf/llava-1.5-7b-hf')")
    return _load_hub(text, device, dtype, **extra)


_HUB_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def _load_hub(repo_id: str, device: str, dtype, device_map=None, gradient_checkpointing=False, strict=True,
              **kw) -> VLM:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    hint = (
        f"Download it on a machine with network access, e.g. `huggingface-cli download {repo_id} "
        f"--local-dir <dir>`, then pass load_model(path_or_id='<dir>')."
    )
    cached = None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - an invalid repo id, an old hub library
        cached = None
    in_cache = isinstance(cached, str)
    if not in_cache and _offline():
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local directory nor in the Hugging Face cache, and the Hub is "
            f"disabled (HF_HUB_OFFLINE). {hint}"
        )
    try:
        model, info = AutoModelForImageTextToText.from_pretrained(
            repo_id, local_files_only=in_cache, output_loading_info=True,
            **_model_kwargs(dtype, device_map=device_map, **kw))
        processor = AutoProcessor.from_pretrained(repo_id, local_files_only=in_cache)
    except Exception as e:  # noqa: BLE001
        where = "the Hugging Face cache" if in_cache else "the Hugging Face Hub"
        raise FileNotFoundError(f"cannot load {repo_id!r} from {where}: {type(e).__name__}: {e}. {hint}") from e
    _check_loading(info, repr(repo_id), strict)
    prepare_for_inference(model, device, device_map, gradient_checkpointing)
    return VLM.from_model(model, processor, source=repo_id)


def answer(vlm, image, question: str, max_new_tokens: int = 8) -> str:
    """The model's own answer from the original image alone (no grounding), greedy."""
    adapter = as_adapter(vlm)
    max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, lo=1)
    img = load_image(image)
    q = check_question(question)
    return adapter.generate(adapter.prepare([img], q), max_new_tokens=max_new_tokens)


__all__ = ["load_model", "answer", "ground", "vicrop", "oracle", "random_box", "Grounding", "Iteration",
           "VLM", "REFERENCE_DIR", "load_image"]
