"""egg as an lmms-eval model: ``lmms-eval --model egg --model_args pretrained=<id or path>,method=egg``.

Registered through the ``lmms_eval.models`` entry-point group (``pip install egg[lmms]``;
lmms-eval >= 0.7 reads that group, see ``lmms_eval.models.registry_v2``), so lmms-eval's
own task loaders, prompts and metrics score EGG::

    lmms-eval --model egg --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=egg \\
        --tasks textvqa_val,vstar_bench,docvqa_val,pope,infovqa_val,gqa,realworldqa --batch_size 1

model_args: pretrained (checkpoint dir or Hub id; empty: egg's reference model), method
(egg | base | vicrop-rel-att | vicrop-grad-att | vicrop-pure-grad | random; "oracle"
needs boxes lmms-eval does not provide), device, dtype, max_new_tokens (cap; the task's
own ``max_new_tokens`` is used when smaller), and any option of the method
(e.g. ``k=1,stopping=fixed,fixed_n=2``). Only ``generate_until`` is supported (all seven
Table 1 tasks use it); the first image of a request is used. Multi-process runs
(``accelerate launch -m lmms_eval ...``) shard requests by rank like lmms-eval's own models.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

MODEL_ID = "egg"


def manifest() -> ModelManifest:
    """The entry point's payload (``[project.entry-points."lmms_eval.models"] egg = "egg.lmms:manifest"``)."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path="egg.lmms.EGG")


def _coerce(v):
    if not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except ValueError:
        low = v.lower()
        if low in ("true", "false"):
            return low == "true"
        return v


class EGG(lmms):
    """lmms-eval model wrapping ``egg`` methods (``egg.experiments.METHODS``)."""

    is_simple = True

    def __init__(self, pretrained: str | None = None, method: str = "egg", device: str | None = None,
                 dtype: str | None = None, max_new_tokens: int = 32, batch_size: int = 1, vlm=None, **options):
        super().__init__()
        from .runs.registry import METHODS, effective_options

        if method not in METHODS:
            raise ValueError(f"unknown egg method {method!r}; valid: {list(METHODS)}")
        if method == "oracle":
            raise ValueError("method 'oracle' needs ground-truth boxes, which lmms-eval requests do not carry")
        if int(batch_size) != 1:
            raise ValueError("egg runs one request at a time (batch_size=1)")
        self.method = method
        self.max_new_tokens = int(max_new_tokens)
        opts = {k: _coerce(v) for k, v in options.items()}
        self._user_options = opts
        self.options = effective_options(method, opts)  # raises on unknown options
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                self._rank, self._world_size = dist.get_rank(), dist.get_world_size()
        except Exception:  # noqa: BLE001
            pass
        if vlm is None:
            import os

            import torch

            from .api import load_model

            if device is None and torch.cuda.is_available():
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
            vlm = load_model(pretrained or None, device=device, dtype=dtype)
        self.vlm = vlm

    # lmms-eval calls these for batching/caching bookkeeping
    @property
    def batch_size(self) -> int:
        return 1

    def _answer(self, image, question: str, max_new_tokens: int) -> str:
        from .runs.registry import METHODS

        item = SimpleNamespace(image=image, question=question, boxes=[], answers=[], options=[], family="lmms",
                               meta={"split": "lmms", "index": 0, "seed": 0})
        params = dict(self.options)
        if "max_new_tokens" in params:
            params["max_new_tokens"] = max_new_tokens
        g = METHODS[self.method](self.vlm, item, **params)
        return g.answer

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from tqdm.auto import tqdm

        out = []
        for req in tqdm(requests, disable=(self.rank != 0), desc="egg"):
            contexts, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            visuals = [v for v in (visuals or []) if v is not None]
            if not visuals:
                raise ValueError(f"task {task!r} doc {doc_id}: egg needs an image, the request has none")
            image = visuals[0]
            if not hasattr(image, "convert"):
                raise TypeError(f"task {task!r}: egg handles images only, got {type(image).__name__}")
            image = image.convert("RGB")
            limit = int((gen_kwargs or {}).get("max_new_tokens", self.max_new_tokens))
            text = self._answer(image, contexts, min(limit, self.max_new_tokens))
            for stop in (gen_kwargs or {}).get("until", []) or []:
                if isinstance(stop, str) and stop and stop in text:
                    text = text.split(stop)[0]
            out.append(text)
            self.cache_hook.add_partial("generate_until", (contexts, gen_kwargs), text)
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError("egg answers by generation only (loglikelihood tasks are not supported)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("egg does not support multi-round generation")


__all__ = ["EGG", "manifest", "MODEL_ID"]
