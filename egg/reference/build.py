"""The reference VLM: a genuine transformers LLaVA (tiny CLIP tower + tiny Llama), built locally.

Everything here produces objects of the same classes a user gets from
`llava-hf/llava-1.5-7b-hf` (LlavaForConditionalGeneration, LlavaProcessor,
PreTrainedTokenizerFast, a CLIP image processor), so the code paths the reference model
exercises are the ones real LLaVA uses.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..synthetic.core import COLOURS, GLYPHS, LETTERS, POSITIONS, SHAPES

IMAGE_TOKEN = "<image>"
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN]

# LLaVA-1.5's conversation format, as a chat template so that the processor builds prompts
# exactly as it does for llava-hf checkpoints.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% else %} ASSISTANT: {% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


@dataclass
class ReferenceConfig:
    """Sizes of the reference model. 96 px input with patch 12 gives an 8x8 token grid.

    96/12 rather than 64/8: the same 64 tokens per image (so the same cost), but a zoomed crop
    keeps a glyph at about 20 px, which a CPU-trained vision tower learns to read and at 64 px
    did not (docs/method.md section 8; measured again in this project's training record).
    """

    image_size: int = 96
    patch_size: int = 12
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    max_positions: int = 512
    # "sincos": the vision tower's position embeddings start as 2-D sine-cosine features (as
    # MAE's ViTs do) instead of CLIP's small random ones. At 24x24 a random start left
    # 576 positions that a linear probe could not tell apart after 1100 steps (loss at
    # chance, log 24), and a tower without positions cannot read a glyph spread over several
    # patches. Only the initial values differ: the saved model is plain CLIP.
    position_init: str = "random"

    def to_dict(self) -> dict:
        return asdict(self)


def vocabulary() -> list[str]:
    """Every word the benchmark's templates and answers use; digits split WordPiece-style."""
    words = set(COLOURS) | set(SHAPES) | set(GLYPHS) | set(POSITIONS) | {x.lower() for x in LETTERS}
    words |= {
        "user", "assistant", ":", "?", ",", ".", "(", ")", "what", "word", "is", "on", "the", "sign",
        "shape", "in", "ring", "are", "shapes", "and", "same", "yes", "no", "answer", "with", "letter",
        "which", "larger", "or", "field", "value", "of", "bar", "there", "a", "image", "large", "region",
        "where", "to", "rings", "write", "general", "description", "above", "below", "middle", "centre", "describe",
    }
    digits = [str(i) for i in range(10)]
    return SPECIALS + sorted(words) + digits + [f"##{d}" for d in digits]


def build_tokenizer():
    """A WordPiece tokenizer over the benchmark vocabulary, saved as PreTrainedTokenizerFast.

    Numbers split into a digit and "##digit" continuations, so "47" is two tokens and decodes
    back to "47"; anything outside the vocabulary maps to <unk>.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", max_input_chars_per_word=32))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=[IMAGE_TOKEN], padding_side="left",
    )
    return fast


def build_processor(cfg: ReferenceConfig):
    """LlavaProcessor with a CLIP image processor that squashes the whole image to the input size.

    No centre crop: the full canvas must stay visible, and a grid cell then maps to pixels by a
    plain per-axis scale.
    """
    from transformers import LlavaProcessor

    try:  # transformers >= 5.2x: the PIL backend, which needs no torchvision
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor

    ip = ImageProcessor(
        size={"height": cfg.image_size, "width": cfg.image_size}, do_center_crop=False,
        crop_size={"height": cfg.image_size, "width": cfg.image_size}, do_resize=True, resample=3,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=ip, tokenizer=build_tokenizer(), patch_size=cfg.patch_size,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


def sincos_positions(grid: int, dim: int):
    """(1 + grid^2, dim) position table: a zero row for CLS, then per patch sines and cosines of
    its row (first half of the features) and column (second half) at geometric frequencies,
    variance 1/4 per feature, about as loud as a patch's content at initialisation."""
    import torch

    q = dim // 4
    freq = 1.0 / (100.0 ** (torch.arange(q, dtype=torch.float32) / q))
    r, c = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij")
    feats = [f(x.reshape(-1, 1) * freq) for x in (r, c) for f in (torch.sin, torch.cos)]
    table = torch.cat(feats, 1) * 0.5 * 2**0.5
    table = torch.nn.functional.pad(table, (0, dim - table.shape[1]))
    return torch.cat([torch.zeros(1, dim), table])


def build_model(cfg: ReferenceConfig, tokenizer, seed: int = 0):
    """A randomly initialised LlavaForConditionalGeneration of the reference size."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 4,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_hidden * 3,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads, max_position_embeddings=cfg.max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)
    if cfg.position_init == "sincos":
        pos = [m for n, m in model.model.vision_tower.named_modules() if n.endswith("embeddings")][0].position_embedding
        with torch.no_grad():
            pos.weight.copy_(sincos_positions(cfg.image_size // cfg.patch_size, cfg.vision_hidden))
    elif cfg.position_init != "random":
        raise ValueError(f"position_init must be 'random' or 'sincos', got {cfg.position_init!r}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def standardise_projector(model, pixel_values) -> tuple[float, float]:
    """Fold the frozen tower's feature mean and spread (over ``pixel_values``) into the
    projector's first layer, so the decoder starts from standardised visual features.

    Why: a warmed-up tower's features can share one large offset (run 11: token norm 350, the
    images differing by 2% of it). Adam moves the projector's bias by about its rate per step,
    so cancelling such an offset takes tens of thousands of steps, and until then every image
    looks alike to the decoder, which learns the answer prior instead. The model stays plain
    LLaVA (only the projector's weights change); returns (offset norm, mean spread)."""
    import torch

    with torch.no_grad():
        hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        feats = hidden[model.config.vision_feature_layer][:, 1:].reshape(-1, hidden[-1].shape[-1])  # no CLS
        mu, sd = feats.mean(0), feats.std(0).clamp_min(1e-6)
        lin = model.model.multi_modal_projector.linear_1
        lin.weight.div_(sd)
        lin.bias.sub_(lin.weight @ mu)
    return float(mu.norm()), float(sd.mean())


def visual_tokens(model, pixel_values):
    """The projector's output, (n_images, tokens, dim): what the decoder reads for each image."""
    import torch

    feats = model.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
    return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats


def check_tower_layer(model, layer: int) -> int:
    """`layer`, refused by name unless the tower has it (0: the patch embeddings): read from the config,
    so a caller can check before rendering anything."""
    depth = model.config.vision_config.num_hidden_layers
    if not 0 <= layer <= depth:
        raise ValueError(f"layer must be 0..{depth} (the tower's layers), got {layer!r}")
    return layer


def tower_tokens(model, pixel_values, layer: int):
    """The vision tower's patch tokens after `layer` of its layers (0: the patch embeddings), its class
    token dropped: at the tower's last layer, what the projector turns into `visual_tokens`."""
    layer = check_tower_layer(model, layer)
    return model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[layer][:, 1:]
