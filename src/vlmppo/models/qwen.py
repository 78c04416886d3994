"""Qwen2-VL and Qwen2.5-VL: ChatML turns, dynamic-resolution images, M-RoPE, no BOS token."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

from vlmppo.models.adapter import TINY, BuildSize, FamilyAdapter, transformers_class
from vlmppo.models.templates import QWEN_CHAT_TEMPLATE
from vlmppo.models.tokenizer import train_byte_level_bpe, vocab_and_merges


@dataclass(frozen=True)
class QwenAdapter(FamilyAdapter):
    """A Qwen VL family; `windowed_vision` marks Qwen2.5-VL's vision tower (the two differ there)."""

    windowed_vision: bool = False
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

    def speed_up(self, model) -> None:
        if (
            not self.windowed_vision
        ):  # Qwen2-VL: its vision tower without per-image loops (models/qwen_vision.py)
            from vlmppo.models.qwen_vision import speed_up_vision

            speed_up_vision(model)

    def position_ids(self, batch, image_processor):
        """M-RoPE positions ``[3, B, T]``, as ``get_rope_index`` computes them for images (zeros at padding).

        The model's own computation loops over the rows with a host sync and a few dozen small ops per row and
        image; for a batch of 64 on a GPU that is ~10k op calls per forward (half of a small model's), so the
        collator computes them (in its worker process) and the model takes them as ``position_ids``."""
        import torch

        ids, types, grids = batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"].tolist()
        keep = batch["attention_mask"].bool()
        positions = torch.zeros((3, *ids.shape), dtype=ids.dtype)
        image = 0
        for row in range(ids.shape[0]):
            # A row's positions depend only on its runs of text and image tokens and its images' grids.
            runs = tuple(
                (kind, len(list(run))) for kind, run in itertools.groupby(types[row][keep[row]].tolist())
            )
            count = sum(kind != 0 for kind, _ in runs)
            row_grids = tuple(tuple(grid) for grid in grids[image : image + count])
            image += count
            positions[:, row, keep[row]] = _row_positions(runs, row_grids, image_processor.merge_size)
        return positions

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

    def vision_config(self, size: BuildSize) -> dict:
        """The vision tower's config of a model of `size` (its head dim must be a multiple of 4, for the 2D
        rotary embedding)."""
        width, depth, heads = size.vision_width, size.vision_depth, size.vision_heads
        if self.windowed_vision:
            # Qwen2.5-VL: SwiGLU MLP, windowed attention (112 px windows) except in the fullatt blocks.
            return dict(depth=depth, hidden_size=width, intermediate_size=width * size.vision_mlp_ratio,
                        num_heads=heads, out_hidden_size=size.text["hidden_size"], window_size=112,
                        fullatt_block_indexes=list(range(1, depth, 2)), initializer_range=size.init)  # fmt: skip
        return dict(depth=depth, embed_dim=width, hidden_size=size.text["hidden_size"], num_heads=heads,
                    mlp_ratio=size.vision_mlp_ratio, initializer_range=size.init)  # fmt: skip

    def tiny_config(self, tokenizer, size: BuildSize = TINY):
        ids = tokenizer.convert_tokens_to_ids
        # mrope_section must sum to head_dim / 2, split like the real 16/24/24 (tiny: 2/3/3, small: 8/12/12).
        half = size.head_dim // 2
        rest = half - half // 4
        text = dict(
            size.text,
            vocab_size=len(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [half // 4, rest // 2, rest - rest // 2],
            },  # fmt: skip
        )
        return transformers_class(self.config_class)(
            text_config=text,
            vision_config=self.vision_config(size),
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
            tie_word_embeddings=True,  # as in the 2B/3B checkpoints
        )

    def tiny_processor(self, tokenizer, size: BuildSize = TINY):
        # The image processor resizes to multiples of 28 within [min, max] pixels: a tiny model's images
        # come to 4..16 tokens ((H/14 * W/14) / 4), a small one's to 4..36.
        image_processor = transformers_class(self.image_processor_class)(
            min_pixels=size.min_pixels, max_pixels=size.max_pixels
        )
        # The image-only variant on every machine, so the saved folder is the same everywhere; it saves
        # itself under the stock class name (see processors.py).
        cls = self.image_only_processor_class()
        return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=self.chat_template)

    def tiny_generation_kwargs(self, tokenizer) -> dict:
        kwargs = super().tiny_generation_kwargs(tokenizer)
        kwargs["eos_token_id"] = [tokenizer.eos_token_id, tokenizer.pad_token_id]  # as Instruct checkpoints
        return kwargs


@functools.lru_cache(maxsize=4096)
def _row_positions(runs: tuple, grids: tuple, merge: int):
    """The M-RoPE positions ``[3, n]`` of a row: text runs count on along all three axes; an image (one per run:
    the template puts text around each) takes its merged (t, h, w) grid from where the text left off, and the
    text after it goes on from there plus the grid's larger side (``get_rope_index``'s rule)."""
    import torch

    pieces, start, images = [], 0, iter(grids)
    for kind, length in runs:
        if kind == 0:
            pieces.append(torch.arange(length).view(1, -1).expand(3, -1) + start)
            start += length
        else:
            t, h, w = next(images)
            h, w = h // merge, w // merge
            grid = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
            pieces.append(torch.stack(grid).reshape(3, -1) + start)
            start += max(h, w)
    return torch.cat(pieces, dim=1)


_COMMON = dict(
    image_processor_class="Qwen2VLImageProcessorPil",
    language_model="model.language_model",
    vision_tower="model.visual",
    projector="model.visual.merger",
    forward_keys=("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"),
    chat_template=QWEN_CHAT_TEMPLATE,
)

QWEN2_VL = QwenAdapter(
    name="qwen2-vl",
    model_type="qwen2_vl",
    processor_class="Qwen2VLProcessor",
    config_class="Qwen2VLConfig",
    **_COMMON,
)

QWEN2_5_VL = QwenAdapter(
    name="qwen2.5-vl",
    model_type="qwen2_5_vl",
    processor_class="Qwen2_5_VLProcessor",
    config_class="Qwen2_5_VLConfig",
    windowed_vision=True,
    **_COMMON,
)
