"""Qwen2-VL and Qwen2.5-VL: ChatML turns, dynamic-resolution images, M-RoPE, no BOS token."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmppo.models.adapter import TINY_INIT, TINY_TEXT, FamilyAdapter, transformers_class
from vlmppo.models.templates import QWEN_CHAT_TEMPLATE
from vlmppo.models.tokenizer import train_byte_level_bpe, vocab_and_merges


@dataclass(frozen=True)
class QwenAdapter(FamilyAdapter):
    """A Qwen VL family; `tiny_vision` is the tiny model's vision config (the two differ there)."""

    tiny_vision: dict = field(default_factory=dict)
    # The image processor resizes to multiples of 28 within [min, max] pixels; 56²..112² keeps a tiny
    # model's images at 4..16 tokens ((H/14 * W/14) / 4).
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    special_tokens: tuple[str, ...] = (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    )

    def set_pixel_budget(self, image_processor, min_pixels: int | None, max_pixels: int | None) -> None:
        # Set on the processor object, not per call: call-time pixel arguments are deprecated in 5.x.
        if min_pixels is not None:
            image_processor.size.shortest_edge = min_pixels
        if max_pixels is not None:
            image_processor.size.longest_edge = max_pixels

    def image_only_processor_class(self):
        from vlmppo.models import processors

        return processors.IMAGE_ONLY[self.processor_class]

    def tiny_tokenizer(self):
        from tokenizers import AddedToken
        from transformers import Qwen2Tokenizer

        vocab, merges = vocab_and_merges(train_byte_level_bpe(self.special_tokens, qwen_pre_tokenizer=True))
        # As in Qwen*-VL-Instruct: no BOS/UNK, answers end with <|im_end|>, padding is <|endoftext|>.
        tokenizer = Qwen2Tokenizer(
            vocab=vocab,
            merges=merges,
            unk_token=None,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            padding_side="left",
        )
        specials = [AddedToken(t, special=True, normalized=False) for t in self.special_tokens]
        tokenizer.add_tokens(specials, special_tokens=True)
        tokenizer.chat_template = self.chat_template
        return tokenizer

    def tiny_config(self, tokenizer):
        ids = tokenizer.convert_tokens_to_ids
        text = dict(
            TINY_TEXT,
            vocab_size=len(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            # mrope_section must sum to head_dim / 2 (64 / 4 heads / 2 = 8), split like the real 16/24/24.
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        )
        return transformers_class(self.config_class)(
            text_config=text,
            vision_config=dict(self.tiny_vision),
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
            tie_word_embeddings=True,  # as in the 2B/3B checkpoints
        )

    def tiny_processor(self, tokenizer):
        image_processor = transformers_class(self.image_processor_class)(
            min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )
        # The image-only variant on every machine, so the saved folder is the same everywhere; it saves
        # itself under the stock class name (see processors.py).
        cls = self.image_only_processor_class()
        return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=self.chat_template)

    def tiny_generation_kwargs(self, tokenizer) -> dict:
        kwargs = super().tiny_generation_kwargs(tokenizer)
        kwargs["eos_token_id"] = [tokenizer.eos_token_id, tokenizer.pad_token_id]  # as Instruct checkpoints
        return kwargs


_COMMON = dict(
    image_processor_class="Qwen2VLImageProcessorPil",
    language_model="model.language_model",
    vision_tower="model.visual",
    projector="model.visual.merger",
    forward_keys=("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"),
    chat_template=QWEN_CHAT_TEMPLATE,
)

# The vision head dim (embed_dim / num_heads = 16) must be a multiple of 4 for the 2D rotary embedding.
QWEN2_VL = QwenAdapter(
    name="qwen2-vl",
    model_type="qwen2_vl",
    processor_class="Qwen2VLProcessor",
    config_class="Qwen2VLConfig",
    tiny_vision=dict(
        depth=2,
        embed_dim=32,
        hidden_size=TINY_TEXT["hidden_size"],
        num_heads=2,
        mlp_ratio=2,
        initializer_range=TINY_INIT,
    ),
    **_COMMON,
)

# Qwen2.5-VL's vision tower: SwiGLU MLP, windowed attention (112 px windows) except in fullatt blocks.
QWEN2_5_VL = QwenAdapter(
    name="qwen2.5-vl",
    model_type="qwen2_5_vl",
    processor_class="Qwen2_5_VLProcessor",
    config_class="Qwen2_5_VLConfig",
    tiny_vision=dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=TINY_TEXT["hidden_size"],
        window_size=112,
        fullatt_block_indexes=[1],
        initializer_range=TINY_INIT,
    ),
    **_COMMON,
)
