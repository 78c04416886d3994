"""Model shapes to benchmark: a real architecture's config with random weights, built from code.

Throughput and memory depend on the architecture and the sequence lengths, not on the weights, so a
benchmark of "a Qwen2-VL-2B-shaped model" needs no download: the config below is the released
checkpoint's (``Qwen/Qwen2-VL-2B-Instruct``'s ``config.json`` and pixel budget), the weights are random,
and the tokenizer and processor are those of the tiny model of the same family. The model is saved with
``save_pretrained`` and loaded back by ``load_model`` like any checkpoint, so the benchmark runs the real
loading path (dtype, attention kernel, LoRA).

What differs from the real checkpoint, and shows in the figures:
* random weights generate random ids, so the benchmark forces a fixed answer length (see ``runner``);
* the tiny tokenizer has a small vocabulary, so a prompt's text takes about twice as many tokens as with
  Qwen's own tokenizer (the image tokens are the real count). The report prints the prompt length.

The built model is cached like the tiny ones (temp folder, completion marker written last, rename).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from vlmppo.errors import ConfigError

SHAPE_VERSION = "v1"  # bump when a shape's config changes, so old caches are not reused
MARKER = "vlmppo-shape-complete.json"


# The config fields that hold a special token's id, and the token each names.
MEDIA_TOKENS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
    "image_token_index": "<image>",
}
QWEN_MEDIA_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


@dataclass(frozen=True)
class Shape:
    """A model architecture to build with random weights.

    Attributes:
        name: What ``--shape`` takes.
        family: The vlmppo model family (its tiny model lends the tokenizer and processor).
        text: Text-config fields (token ids and vocabulary come from the released checkpoint).
        vision: Vision-config fields.
        min_pixels: The released processor's pixel budget (image tokens = patches / 4 within it).
        max_pixels: See `min_pixels`.
        tie_word_embeddings: As in the released checkpoint.
    """

    name: str
    family: str
    text: dict = field(default_factory=dict)
    vision: dict = field(default_factory=dict)
    min_pixels: int | None = 56 * 56
    max_pixels: int | None = 28 * 28 * 1280
    tie_word_embeddings: bool = True
    hub_ids: tuple[str, ...] = ()
    released_ids: dict = field(default_factory=dict)

    def config(self, tokenizer=None):
        """The transformers config.

        With a tokenizer (the benchmark builds the model around the tiny model's tokenizer), the special-token
        ids are that tokenizer's, so its prompts are valid; without one (the dry-run's parameter count on the
        meta device), they are the released checkpoint's.
        """
        from vlmppo.models.adapter import transformers_class
        from vlmppo.models.families import FAMILIES

        ids, text = dict(self.released_ids), dict(self.text)
        if tokenizer is not None:
            keys = QWEN_MEDIA_KEYS if self.family.startswith("qwen") else ("image_token_index",)
            ids.update({k: tokenizer.convert_tokens_to_ids(MEDIA_TOKENS[k]) for k in keys})
            text.update(
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
            )
        return transformers_class(FAMILIES[self.family].config_class)(
            text_config=text,
            vision_config=dict(self.vision),
            tie_word_embeddings=self.tie_word_embeddings,
            **ids,
        )


# Qwen/Qwen2-VL-2B-Instruct: 1.54B language model + 0.67B vision tower (2.21B parameters).
QWEN2_VL_2B = Shape(
    name="qwen2-vl-2b",
    family="qwen2-vl",
    text=dict(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=32768,
        max_window_layers=28,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        use_sliding_window=False,
        sliding_window=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    ),
    vision=dict(
        depth=32,
        embed_dim=1280,
        hidden_size=1536,
        hidden_act="quick_gelu",
        mlp_ratio=4,
        num_heads=16,
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        initializer_range=0.02,
    ),
    min_pixels=56 * 56,
    max_pixels=28 * 28 * 1280,  # the Instruct processor's default max (1280 image tokens)
    hub_ids=("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-2B"),
    released_ids=dict(
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653
    ),
)

# Qwen/Qwen2.5-VL-3B-Instruct: 3.09B language model + 0.67B vision tower (windowed attention).
QWEN25_VL_3B = Shape(
    name="qwen2.5-vl-3b",
    family="qwen2.5-vl",
    text=dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    ),
    vision=dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=2048,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        hidden_act="silu",
        in_channels=3,
    ),
    hub_ids=("Qwen/Qwen2.5-VL-3B-Instruct",),
    released_ids=dict(
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653
    ),
)

# llava-hf/llava-v1.6-mistral-7b-hf: Mistral-7B + CLIP ViT-L/14-336, "anyres" tiles.
LLAVA_NEXT_MISTRAL_7B = Shape(
    name="llava-next-mistral-7b",
    family="llava-next",
    text=dict(
        model_type="mistral",
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        rope_theta=1e6,
        sliding_window=None,  # Mistral-7B-Instruct-v0.2, as llava-v1.6-mistral ships it
    ),
    vision=dict(
        model_type="clip_vision_model",
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    ),
    min_pixels=None,  # fixed-size CLIP views: no pixel budget
    max_pixels=None,
    tie_word_embeddings=False,
    hub_ids=("llava-hf/llava-v1.6-mistral-7b-hf",),
    released_ids=dict(
        image_token_index=32000,
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    ),
)

# Shapes `vlmppo bench --shape` builds.
SHAPES: dict[str, Shape] = {s.name: s for s in (QWEN2_VL_2B, LLAVA_NEXT_MISTRAL_7B)}
KNOWN_RELEASES: tuple[Shape, ...] = (QWEN2_VL_2B, QWEN25_VL_3B, LLAVA_NEXT_MISTRAL_7B)  # the presets' models


def shape_for_hub_id(hub_id: str) -> Shape | None:
    """The released architecture behind a Hub id the presets use, or None."""
    return next((s for s in KNOWN_RELEASES if hub_id in s.hub_ids), None)


SHAPE_CHOICES = ("tiny", *SHAPES)  # "tiny": the preset family's tiny random model


def get_shape(name: str) -> Shape:
    try:
        return SHAPES[name]
    except KeyError:
        raise ConfigError(
            f"Unknown model shape '{name}' for --shape.",
            hint=f"Choose one of: {', '.join(SHAPE_CHOICES)} (or leave --shape out to benchmark the "
            "preset's own model.path).",
        ) from None


def build_shape_model(shape: Shape, out_dir: Path, *, device: str = "cpu") -> Path:
    """Build `shape` with random bf16 weights (fp32 on CPU) and save it, loadable by ``load_model``.

    The weights are initialised on `device`: drawing 2B random numbers takes a minute on a CPU and
    under a second on a GPU. The tiny model of the same family lends the tokenizer and processor; the
    processor gets the released checkpoint's pixel budget, so images take their real number of tokens.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from vlmppo.models.processors import load_processor
    from vlmppo.models.tiny import get_family, resolve_model_path, save_build

    family = get_family(shape.family)
    processor = load_processor(resolve_model_path(f"tiny:{shape.family}"), family)
    if shape.family.startswith("qwen"):
        family.set_pixel_budget(processor.image_processor, shape.min_pixels, shape.max_pixels)
    else:
        use_clip_views(processor, shape)
    tokenizer = processor.tokenizer
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    start = time.perf_counter()
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(shape.config(tokenizer), dtype=dtype)
    model.generation_config = GenerationConfig(**family.tiny_generation_kwargs(tokenizer))
    seconds = round(time.perf_counter() - start, 3)
    save_build(model, processor, out_dir, {"shape": shape.name, "shape_version": SHAPE_VERSION,
                                           "build_seconds": seconds}, MARKER)  # fmt: skip
    return out_dir


def use_clip_views(processor, shape: Shape) -> None:
    """Set a LLaVA processor to the shape's CLIP input size (and LLaVA-NeXT's grid of crops), so that a
    frame takes the released model's number of image tokens."""
    side = shape.vision["image_size"]
    image_processor = processor.image_processor
    image_processor.size = {"shortest_edge": side}
    image_processor.crop_size = {"height": side, "width": side}
    if "image_grid_pinpoints" in shape.released_ids:
        image_processor.image_grid_pinpoints = shape.released_ids["image_grid_pinpoints"]
    processor.patch_size = shape.vision["patch_size"]


def shape_model_path(shape: Shape, *, device: str = "cpu") -> Path:
    """The cached build of `shape` (``$VLMPPO_CACHE/bench/<name>-<version>``), built on first use."""
    from vlmppo.models.tiny import cache_dir, cached_build

    final = cache_dir() / "bench" / f"{shape.name}-{SHAPE_VERSION}"
    return cached_build(final, lambda out: build_shape_model(shape, out, device=device), MARKER)
