"""Model adapters: everything model-specific, chosen from the model's config, never its name.

>>> adapter = adapter_for(model, processor)           # a VLMAdapter for this model
>>> register(MyAdapter, model_types=("qwen2_5_vl",))  # plug in a new model family

``adapter_for`` looks the model up by its config class first (``register(...,
config_classes=...)``), then by ``model.config.model_type``. A ``VLM`` bundles a model, its
processor and its adapter; every public function of the package accepts one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..adapters.records import Cost, EmbeddingCache, ForwardOutput, Prepared, TokenGrid
from ..adapters.base import VLMAdapter
from .internvl import InternVLAdapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .qwen_vl import Qwen2_5_VLAdapter, Qwen3VLAdapter

_BY_MODEL_TYPE: dict[str, type[VLMAdapter]] = {}
_BY_CONFIG_CLASS: dict[type, type[VLMAdapter]] = {}


def register(adapter_cls: type[VLMAdapter], model_types=(), config_classes=()) -> type[VLMAdapter]:
    """Make ``adapter_for`` return ``adapter_cls`` for these model types / config classes.

    ``model_types`` defaults to ``adapter_cls.model_types``. Returns the class, so it can
    be used as a decorator via ``functools.partial``. Later registrations win.
    """
    for mt in tuple(model_types) or tuple(adapter_cls.model_types):
        _BY_MODEL_TYPE[str(mt)] = adapter_cls
    for cc in config_classes:
        _BY_CONFIG_CLASS[cc] = adapter_cls
    return adapter_cls


def registered() -> dict[str, str]:
    """model_type -> adapter class name, for the registered adapters."""
    return {k: v.__name__ for k, v in sorted(_BY_MODEL_TYPE.items())}


def adapter_class(model) -> type[VLMAdapter]:
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise TypeError(f"{type(model).__name__} has no .config; expected a transformers model")
    for klass in type(cfg).__mro__:
        if klass in _BY_CONFIG_CLASS:
            return _BY_CONFIG_CLASS[klass]
    mt = getattr(cfg, "model_type", None)
    if mt in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[mt]
    raise NotImplementedError(
        f"no egg adapter for model_type={mt!r} ({type(cfg).__name__}); registered: {registered()}. "
        "Write a VLMAdapter subclass and egg.adapters.register() it."
    )


def adapter_for(model, processor) -> VLMAdapter:
    """The adapter for ``model`` (chosen by config class / model_type), bound to ``processor``."""
    return adapter_class(model)(model, processor)


register(LlavaAdapter)
register(LlavaNextAdapter)
register(Qwen2_5_VLAdapter)
register(Qwen3VLAdapter)
register(InternVLAdapter)


def _register_config_classes() -> None:
    """Also key the adapters by transformers' config classes (exact, subclass-aware)."""
    import transformers

    for name, cls in (("LlavaConfig", LlavaAdapter), ("LlavaNextConfig", LlavaNextAdapter),
                      ("Qwen2_5_VLConfig", Qwen2_5_VLAdapter), ("Qwen3VLConfig", Qwen3VLAdapter),
                      ("InternVLConfig", InternVLAdapter)):
        cfg = getattr(transformers, name, None)
        if cfg is not None:
            register(cls, model_types=(cls.model_types[0],), config_classes=(cfg,))


try:
    _register_config_classes()
except Exception:  # noqa: BLE001 - an old transformers without some class: model_type still works
    pass


@dataclass
class VLM:
    """A model, its processor and its adapter. ``source`` says where it was loaded from."""

    model: object
    processor: object
    adapter: VLMAdapter
    source: str | None = None
    info: dict = field(default_factory=dict)

    @classmethod
    def from_model(cls, model, processor, source: str | None = None) -> "VLM":
        model.eval()
        return cls(model=model, processor=processor, adapter=adapter_for(model, processor), source=source)

    def __repr__(self) -> str:
        return (f"VLM({type(self.model).__name__}, adapter={type(self.adapter).__name__}, "
                f"layers={self.adapter.num_layers}, source={self.source!r})")


def as_adapter(vlm) -> VLMAdapter:
    """Accept a VLM or an adapter; return the adapter."""
    if isinstance(vlm, VLMAdapter):
        return vlm
    adapter = getattr(vlm, "adapter", None)
    if isinstance(adapter, VLMAdapter):
        return adapter
    raise TypeError(f"expected an egg VLM (egg.load_model) or a VLMAdapter, got {type(vlm).__name__}")


__all__ = [
    "VLM", "VLMAdapter", "LlavaAdapter", "LlavaNextAdapter", "Qwen2_5_VLAdapter", "Qwen3VLAdapter", "InternVLAdapter", "TokenGrid", "Prepared", "Cost", "EmbeddingCache", "ForwardOutput",
    "adapter_for", "adapter_class", "register", "registered", "as_adapter",
]
