"""Batched text generation from (frame, prompt) pairs: what `collect --policy checkpoint`, the `hf`
labeller and evaluation use. One `generate` call for the whole batch, left-padded."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vlmppo.models.inputs import build_inputs
from vlmppo.models.loading import LoadedModel, load_model


def to_pil(image) -> Image.Image:
    """uint8 HxWx3 arrays go to PIL directly (no float round trip, which once inverted colours)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


MEDIA_TOKEN_KEYS = (
    "image_token_id",
    "image_token_index",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
)


def media_token_ids(model) -> list[int]:
    """Ids of the image/video placeholder tokens, which an answer must never contain.

    A sampled ``<|image_pad|>`` in an answer makes the next forward count one more image token than
    there are image features and crash; an untrained model samples them now and then. Generation
    suppresses these ids, and PPO scoring masks them the same way so both see one distribution.
    """
    config = model.config
    found = {getattr(config, key, None) for key in MEDIA_TOKEN_KEYS}
    return sorted(int(i) for i in found if isinstance(i, int) and i >= 0)


def resolve_decoder(name: str, device) -> str:
    """``model.decoder``: ``auto`` is the static-cache decoder on a CUDA device, ``generate`` elsewhere."""
    if name != "auto":
        return name
    return "static" if str(device).startswith("cuda") else "generate"


_STATIC_DECODERS = weakref.WeakKeyDictionary()


def static_decoder_for(model, *, compile: bool = False):
    """The model's ``StaticDecoder`` (buffers and CUDA graphs kept between calls), made on first use;
    ``compile``: the one whose decode forward goes through ``torch.compile``."""
    from vlmppo.models.static_decode import StaticDecoder

    decoders = _STATIC_DECODERS.setdefault(model, {})
    if compile not in decoders:
        decoders[compile] = StaticDecoder(model, compile=compile)
    return decoders[compile]


def generate_ids(
    model,
    tokenizer,
    batch,
    *,
    temperature: float,
    max_new_tokens: int,
    decoder: str = "generate",
    forced_lengths=None,
    prompt=None,
):
    """One batched sampling pass over a left-padded prompt batch; returns prompt + answer ids ``[B, P + T]``.

    ``temperature`` 0 is greedy; otherwise plain sampling from ``softmax(logits / temperature)`` (no top-k,
    no top-p), which is the distribution PPO's scoring pass recomputes. Image/video placeholder ids are
    never sampled (``media_token_ids``).

    Args:
        decoder: ``static`` (``models/static_decode.py``: static KV cache, CUDA graphs on a GPU, early
            finishers out), ``static-compiled`` (the same with the decode forward through
            ``torch.compile``) or ``generate`` (transformers' ``generate``, the reference).
        forced_lengths: Benchmarks only: ``[B]`` answer lengths to force (end token banned before the
            last position and placed there), so throughput compares across runs of random weights.
        prompt: The batch's ``PromptEmbeddings`` (static decoders only): the prefill reuses them.
    """
    import torch

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    with torch.no_grad():
        if decoder.startswith("static"):
            from vlmppo.models.static_decode import SamplingSpec

            spec = SamplingSpec(
                temperature=temperature,
                max_new_tokens=max_new_tokens,
                eos_id=eos,
                pad_id=pad,
                suppressed=tuple(media_token_ids(model)),
                forced_lengths=forced_lengths is not None,
            )
            compiled = decoder == "static-compiled"
            return static_decoder_for(model, compile=compiled).generate(batch, spec, forced_lengths, prompt)
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
            if temperature > 0
            else {"do_sample": False}
        )
        if forced_lengths is not None:
            from transformers import LogitsProcessorList

            prompt_len = batch["input_ids"].shape[1]
            sampling["logits_processor"] = LogitsProcessorList(
                [ForcedLengths(forced_lengths, prompt_len, eos)]
            )
        return model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            suppress_tokens=media_token_ids(model) or None,
            **sampling,
        )


class ForcedLengths:
    """A logits processor (benchmarks only): answer ``i`` ends with the end token at position
    ``lengths[i] - 1`` and nowhere before, as ``SamplingSpec.forced_lengths`` does for the static decoder."""

    def __init__(self, lengths, prompt_len: int, eos_id: int):
        self.lengths, self.prompt_len, self.eos_id = lengths, prompt_len, eos_id

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        lengths = self.lengths.to(scores.device)
        scores[step < lengths - 1, self.eos_id] = float("-inf")
        at_end = step == lengths - 1
        scores[at_end] = float("-inf")
        scores[at_end, self.eos_id] = 0.0
        return scores


@dataclass
class Generator:
    """Batched answers of a loaded model. ``decoder``: ``model.decoder`` (auto | static | generate)."""

    loaded: LoadedModel
    device: str = "cpu"
    decoder: str = "auto"

    def generate_answers(
        self, images, prompts: list[str], *, temperature: float, max_new_tokens: int
    ) -> tuple[list[str], list[list[int]]]:
        """Answer each (image, prompt) pair; ``temperature`` 0 is greedy.

        Args:
            images: one frame per prompt (uint8 ``[H, W, 3]`` arrays or PIL images).
            prompts: the task texts (the chat template is applied here).

        Returns:
            The answer texts (without special tokens) and each answer's generated ids, through its
            end-of-turn token (padding after it dropped).
        """
        tokenizer = self.loaded.tokenizer
        batch = build_inputs(self.loaded, [to_pil(im) for im in images], list(prompts)).to(self.device)
        out = generate_ids(
            self.loaded.model,
            tokenizer,
            batch,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            decoder=resolve_decoder(self.decoder, self.device),
        )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        eos = tokenizer.eos_token_id
        ids = [row[: row.index(eos) + 1] if eos in row else row for row in new_tokens.tolist()]
        return tokenizer.batch_decode(new_tokens, skip_special_tokens=True), ids

    def generate_text(
        self, images, prompts: list[str], *, temperature: float, max_new_tokens: int
    ) -> list[str]:
        """The answer texts only (see ``generate_answers``)."""
        return self.generate_answers(images, prompts, temperature=temperature, max_new_tokens=max_new_tokens)[
            0
        ]


def load_generator(model_cfg, *, device: str = "cpu") -> Generator:
    """Load a model for inference only (no LoRA wrapping, frozen weights) on one device.

    Large labeller models go to ``device`` whole; sharding over several GPUs is not built yet.
    """
    return Generator(load_model(model_cfg, device=device, for_training=False), device, model_cfg.decoder)
