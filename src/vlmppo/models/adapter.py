"""The family adapter: everything family-specific, so that no other module branches on families.

An adapter says how to recognise the family (``config.json`` ``model_type``), where its parts live in the
module tree (language model, vision tower, projector), what its forward needs besides ``input_ids``, and
how to build a tiny random member of the family (config, tokenizer, image processor, processor, chat
template). Module paths are those of transformers 5.x (``model.language_model``, ``model.visual``,
``model.vision_tower``); 4.x is not supported.

Importing this module does not import torch or transformers: the builders import them when called.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from vlmppo.errors import ModelError

# Tiny models: two decoder layers of width 64, ~150-200k parameters in all (forward in milliseconds on
# 2 CPU cores). Weights are drawn with std 0.2 rather than the usual 0.02: at 0.02 a tiny model's output
# barely depends on its input (greedy decoding repeats one token for every prompt), hiding padding bugs.
TINY_INIT = 0.2
# What a released checkpoint's generation_config.json may set (see FamilyAdapter.tiny_generation_kwargs).
HOSTILE_GENERATION = dict(
    do_sample=True,
    temperature=0.7,
    top_k=20,
    top_p=0.8,
    min_p=0.05,
    repetition_penalty=1.05,
    no_repeat_ngram_size=3,
)
TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    initializer_range=TINY_INIT,
)


# Small models: the same code with real widths (~14M parameters), for learning real tasks from scratch on a GPU
# (docs/learning.md). Standard init (0.02): they are trained, not only run.
SMALL_INIT = 0.02
SMALL_TEXT = dict(
    hidden_size=384,
    intermediate_size=1536,
    num_hidden_layers=4,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    initializer_range=SMALL_INIT,
)


@dataclass(frozen=True)
class BuildSize:
    """How big a model built from code is; each family maps these numbers onto its own config keys.

    Attributes:
        name: ``tiny`` (tests on a CPU) or ``small`` (learning on a GPU): the ``<name>:<family>`` model path.
        text: The decoder's config values (width, layers, heads, init).
        vision_width, vision_depth, vision_heads, vision_mlp_ratio: The vision tower's.
        init: Weight init std of the vision tower.
        min_pixels, max_pixels: Qwen image processor's pixel budget (images resized to multiples of 28).
        image_size: LLaVA's CLIP input side (``(image_size / 14)²`` image tokens per view).
    """

    name: str
    text: dict
    vision_width: int
    vision_depth: int
    vision_heads: int
    vision_mlp_ratio: int
    init: float
    min_pixels: int
    max_pixels: int
    image_size: int

    @property
    def head_dim(self) -> int:
        return self.text["hidden_size"] // self.text["num_attention_heads"]


TINY = BuildSize("tiny", TINY_TEXT, 32, 2, 2, 2, TINY_INIT, 56 * 56, 112 * 112, 28)
# 168 px: NumberLine's digits (44 px at 300) come out ~25 px tall, two 14 px patches; a 6x6 MiniGrid at
# tile 28 is 168 px, one cell = 2x2 patches = one merged Qwen token.
SMALL = BuildSize("small", SMALL_TEXT, 256, 4, 4, 4, SMALL_INIT, 56 * 56, 168 * 168, 168)
SIZES = {size.name: size for size in (TINY, SMALL)}


def transformers_class(name: str):
    """A class exported by transformers, by name (``"Qwen2VLConfig"``)."""
    import transformers

    return getattr(transformers, name)


@dataclass(frozen=True)
class FamilyAdapter(ABC):
    """What the rest of vlmppo needs to know about one model family.

    Attributes:
        name: The family's name in configs (``model.family``).
        model_type: ``model_type`` in a checkpoint's ``config.json``.
        processor_class: The stock transformers processor class (what ``AutoProcessor`` builds).
        config_class: The transformers config class of the whole model.
        image_processor_class: The PIL image processor class used for tiny models (the plain names
            are the torchvision backends in 5.x).
        language_model: Module path of the decoder; LoRA is limited to linear layers under it.
        vision_tower: Module path of the vision encoder.
        projector: Module path of the vision-to-language projector (may lie inside the vision tower).
        forward_keys: Every key a forward pass with images needs; rollout buffers and collators must
            carry all of them (e.g. Qwen2-VL's ``mm_token_type_ids``: 1 at image tokens, 0 elsewhere).
        chat_template: The Jinja chat template a tiny model of this family ships with.
    """

    name: str
    model_type: str
    processor_class: str
    config_class: str
    image_processor_class: str
    language_model: str
    vision_tower: str
    projector: str
    forward_keys: tuple[str, ...]
    chat_template: str

    def image_only_processor_class(self):
        """A processor class to fall back on when the stock one can't be built here, or None."""
        return None

    def set_pixel_budget(self, image_processor, min_pixels: int | None, max_pixels: int | None) -> None:
        """Apply ``model.min_pixels``/``max_pixels``; only dynamic-resolution families accept them."""
        if min_pixels is not None or max_pixels is not None:
            raise ModelError(
                f"model.min_pixels/max_pixels apply to Qwen families only, not {self.name}.",
                hint="Remove them from the config.",
            )

    def speed_up(self, model) -> None:
        """Swap in exact, faster forms of the model's modules where the family has them (in place)."""
        return None

    def position_ids(self, batch, image_processor):
        """The position ids the model would compute from ``batch`` itself, computed here on the CPU (a collator
        calls this, so the training process does not), or None: the model's own default is cheap."""
        return None

    @abstractmethod
    def tiny_tokenizer(self):
        """A byte-level BPE tokenizer with the family's special tokens (trained locally)."""

    @abstractmethod
    def tiny_config(self, tokenizer, size: BuildSize = TINY):
        """The ``PreTrainedConfig`` of a model of `size`; every token id is looked up in `tokenizer`."""

    @abstractmethod
    def tiny_processor(self, tokenizer, size: BuildSize = TINY):
        """The processor: image processor set for `size`'s images + `tokenizer` + chat template."""

    def tiny_generation_kwargs(self, tokenizer) -> dict:
        """``GenerationConfig`` fields of the tiny model: stop at the end-of-turn token, pad with the pad token,
        and the sampling defaults a released checkpoint ships, on purpose.

        Qwen2-VL/2.5-VL Instruct ship ``repetition_penalty`` 1.05 with ``top_k``/``top_p``/``temperature``;
        other checkpoints carry ``min_p`` or ``no_repeat_ngram_size``. Any of them reaching PPO's sampling
        makes the sampled distribution differ from the one scoring recomputes. The tiny models carry all of
        them, so every test that generates checks that vlmppo's own settings (``models/generation.py``) win.
        """
        return dict(
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            **HOSTILE_GENERATION,
        )
