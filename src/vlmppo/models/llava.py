"""LLaVA 1.5 (CLIP + Llama) and LLaVA-NeXT 1.6 (CLIP + Mistral, any-resolution image grid)."""

from __future__ import annotations

from dataclasses import dataclass

from vlmppo.models.adapter import TINY, BuildSize, FamilyAdapter, transformers_class
from vlmppo.models.templates import LLAVA_CHAT_TEMPLATE, LLAVA_NEXT_CHAT_TEMPLATE
from vlmppo.models.tokenizer import train_byte_level_bpe

PATCH = 14


@dataclass(frozen=True)
class LlavaAdapter(FamilyAdapter):
    """A LLaVA family; `any_resolution` adds LLaVA-NeXT's grid of crops (``image_grid_pinpoints``)."""

    text_model_type: str = "llama"
    any_resolution: bool = False
    special_tokens: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>", "<image>")

    def tiny_tokenizer(self):
        from tokenizers import processors
        from transformers import PreTrainedTokenizerFast

        backend = train_byte_level_bpe(self.special_tokens, qwen_pre_tokenizer=False)
        # Like Llama/Mistral tokenizers, encoding prepends <s>; chat templates don't write it.
        bos = ("<s>", backend.token_to_id("<s>"))
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[bos]
        )
        # A generic fast tokenizer has no model_input_names of its own; without them generate()
        # complains about token_type_ids.
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            padding_side="left",
            model_input_names=["input_ids", "attention_mask"],
        )
        tokenizer.chat_template = self.chat_template
        return tokenizer

    @staticmethod
    def _pinpoints(size: BuildSize) -> list[list[int]]:
        # One base view plus up to 2x2 crops of the CLIP input size (tiny: 28 px, 4 image tokens per view).
        s = size.image_size
        return [[s, 2 * s], [2 * s, s], [2 * s, 2 * s]]

    def tiny_config(self, tokenizer, size: BuildSize = TINY):
        text = dict(
            size.text,
            model_type=self.text_model_type,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        if self.text_model_type == "mistral":
            text["sliding_window"] = None  # as Mistral-7B-Instruct-v0.2 under llava-v1.6-mistral
        vision = dict(
            model_type="clip_vision_model",
            hidden_size=size.vision_width,
            intermediate_size=size.vision_width * size.vision_mlp_ratio,
            num_hidden_layers=size.vision_depth,
            num_attention_heads=size.vision_heads,
            image_size=size.image_size,
            patch_size=PATCH,
            projection_dim=size.vision_width,
            initializer_range=size.init,
        )
        if self.any_resolution:
            extra = {"image_grid_pinpoints": self._pinpoints(size)}
        else:
            extra = {"image_seq_length": (size.image_size // PATCH) ** 2}
        return transformers_class(self.config_class)(
            text_config=text,
            vision_config=vision,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_select_strategy="default",  # drop CLS, as llava-hf checkpoints do
            vision_feature_layer=-2,
            **extra,
        )

    def tiny_processor(self, tokenizer, size: BuildSize = TINY):
        side = size.image_size
        extra = {"image_grid_pinpoints": self._pinpoints(size)} if self.any_resolution else {}
        image_processor = transformers_class(self.image_processor_class)(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}, **extra
        )
        return transformers_class(self.processor_class)(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
            chat_template=self.chat_template,
        )


_COMMON = dict(
    language_model="model.language_model",
    vision_tower="model.vision_tower",
    projector="model.multi_modal_projector",
)

LLAVA = LlavaAdapter(
    name="llava",
    model_type="llava",
    processor_class="LlavaProcessor",
    config_class="LlavaConfig",
    image_processor_class="LlavaImageProcessorPil",
    forward_keys=("input_ids", "attention_mask", "pixel_values"),
    chat_template=LLAVA_CHAT_TEMPLATE,
    **_COMMON,
)

LLAVA_NEXT = LlavaAdapter(
    name="llava-next",
    model_type="llava_next",
    processor_class="LlavaNextProcessor",
    config_class="LlavaNextConfig",
    image_processor_class="LlavaNextImageProcessorPil",
    forward_keys=("input_ids", "attention_mask", "pixel_values", "image_sizes"),
    chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
    text_model_type="mistral",
    any_resolution=True,
    **_COMMON,
)
