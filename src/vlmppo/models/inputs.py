"""Model inputs from (image, prompt) pairs, with the family's chat template and left padding.

PPO, SFT, collection and evaluation all build prompts here, so a prompt is tokenized the same way at
generation time and when it is scored again later.

With ``env.history: K`` a prompt also carries the episode's last K turns (``Turn``: the frame the model saw
and the answer it gave), each as a user turn holding only its frame and an assistant turn holding the
answer, before the current user turn (frame + task text). The task text is written once, last: it is the
same at every step, and next to the current frame is where the model needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmppo.models.frame_cache import cached_processing

if TYPE_CHECKING:
    from PIL.Image import Image
    from transformers import BatchFeature

    from vlmppo.models.loading import LoadedModel

IGNORE_INDEX = -100  # label value the loss skips (transformers' convention)


@dataclass(frozen=True)
class Turn:
    """An earlier step of the episode, as the model saw and answered it.

    Attributes:
        frame: The observation of that step (``[H, W, 3]`` uint8 array or PIL image).
        answer: The answer text the model gave (decoded, without special tokens).
    """

    frame: Any
    answer: str


def to_pil(image) -> Image:
    """uint8 HxWx3 arrays go to PIL directly (no float round trip, which once inverted colours)."""
    from PIL import Image as PilImage

    if isinstance(image, PilImage.Image):
        return image.convert("RGB")
    return PilImage.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def user_turn(prompt_text: str) -> list[dict]:
    """The conversation of one step: a user turn with the image first, then the text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt_text}]}]


def conversation(prompt_text: str, history: Sequence[Turn] = ()) -> list[dict]:
    """The chat of one step: for each earlier turn a user turn with its frame and an assistant turn with its
    answer, oldest first, then the current user turn (frame, then the task text)."""
    messages = []
    for turn in history:
        messages.append({"role": "user", "content": [{"type": "image"}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.answer}]})
    return messages + user_turn(prompt_text)


def chat_prompt(
    loaded: LoadedModel,
    prompt_text: str,
    *,
    add_generation_prompt: bool = True,
    history: Sequence[Turn] = (),
) -> str:
    """The templated prompt text, up to and including the generation prompt (e.g. ``ASSISTANT:``).

    Each image (one per earlier turn in `history`, then the current one) appears as the family's single
    placeholder (``<image>``, or Qwen's ``<|vision_start|><|image_pad|><|vision_end|>``); the processor
    expands it to one token per image feature.
    """
    return loaded.processor.apply_chat_template(
        conversation(prompt_text, history), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def process_images_on(loaded: LoadedModel, device) -> bool:
    """Run ``loaded``'s image processor (resize, rescale, normalise, patchify) on ``device`` from now on,
    when that is a CUDA device and the processor is a torchvision one (the stock processors where
    torchvision is installed); True if so. The pixels then differ from the host's within the resize
    kernels' rounding, so switch it on before the first input of a run is built, never in the middle.
    """
    from transformers.image_processing_backends import TorchvisionBackend

    image_processor = getattr(loaded.processor, "image_processor", None)
    if not str(device).startswith("cuda") or not isinstance(image_processor, TorchvisionBackend):
        return False
    loaded.image_device = device
    return True


def build_inputs(
    loaded: LoadedModel,
    images: list[Image],
    prompts: list[str],
    *,
    answers: list[str] | None = None,
    add_generation_prompt: bool = True,
    histories: Sequence[Sequence[Turn]] | None = None,
) -> BatchFeature:
    """Tokenize a batch of user turns (optionally followed by answers), left-padded.

    With `answers`, each row is its prompt's tokens followed by the answer's tokens and the end-of-turn
    (eos) token. The answer is tokenized on its own, so the prompt part is token for token what
    generation saw; ``labels`` holds the answer tokens and `IGNORE_INDEX` elsewhere.

    Args:
        loaded: From `load_model`.
        images: One PIL image per prompt.
        prompts: The user texts (before templating).
        answers: Optional assistant answers, one per prompt, without the end-of-turn token.
        add_generation_prompt: End each prompt with the assistant's turn opener.
        histories: Optional earlier turns of each prompt's episode (oldest first; may be empty), put
            before its user turn (see `conversation`). Only the last answer gets labels.

    Returns:
        A ``BatchFeature`` of tensors with every key in ``loaded.family.forward_keys``:
        ``input_ids``/``attention_mask`` ``[B, T]`` (left-padded), pixel inputs over all ``N`` images
        (row by row, each row's earlier frames first; ``N = B`` without history) (Qwen:
        ``pixel_values`` ``[N_patches, C*t*p*p]``, ``image_grid_thw`` ``[N, 3]``; LLaVA:
        ``pixel_values`` ``[N, 3, H, W]``; LLaVA-NeXT: ``pixel_values`` ``[N, N_views, 3, H, W]``,
        ``image_sizes`` ``[N, 2]``), per-token keys such as ``mm_token_type_ids`` ``[B, T]``, and with
        `answers` also ``labels`` ``[B, T]``.
    """
    if (
        len(images) != len(prompts)
        or (answers is not None and len(answers) != len(prompts))
        or (histories is not None and len(histories) != len(prompts))
    ):
        raise ValueError(
            f"build_inputs needs one image (and answer, and history) per prompt; got {len(images)} images, "
            f"{len(prompts)} prompts, {None if answers is None else len(answers)} answers, "
            f"{None if histories is None else len(histories)} histories"
        )
    histories = histories if histories is not None else [()] * len(prompts)
    texts = [
        chat_prompt(loaded, p, add_generation_prompt=add_generation_prompt, history=h)
        for p, h in zip(prompts, histories, strict=True)
    ]
    # The processor takes the images of all rows in the order their placeholders appear in the texts.
    all_images = [
        frame
        for image, history in zip(images, histories, strict=True)
        for frame in [*(to_pil(turn.frame) for turn in history), image]
    ]
    on_device = {"images_kwargs": {"device": loaded.image_device}} if loaded.image_device is not None else {}
    with cached_processing(
        loaded.processor, loaded.frame_device
    ) as processor:  # a frame seen before is not processed again
        batch = processor(
            images=all_images, text=texts, padding=True, padding_side="left", return_tensors="pt", **on_device
        )
    missing = [k for k in loaded.family.forward_keys if k not in batch]
    if missing:
        raise RuntimeError(
            f"{type(loaded.processor).__name__} did not return {missing} for {loaded.family.name}"
        )
    if answers is not None:
        batch = _append_answers(loaded, batch, answers)
    return batch


def _append_answers(loaded: LoadedModel, batch: BatchFeature, answers: list[str]) -> BatchFeature:
    """Re-pad (left) each prompt row followed by its answer ids + eos; add ``labels``."""
    import torch

    tokenizer = loaded.tokenizer
    answer_ids = tokenizer([a + tokenizer.eos_token for a in answers], add_special_tokens=False)["input_ids"]
    mask = batch["attention_mask"].bool()  # [B, T_prompt]
    # Keys shaped like input_ids are per-token (attention_mask, mm_token_type_ids, ...): answers are
    # text, so they continue with 1 in the attention mask and 0 in every type-id key.
    per_token = [
        k for k, v in batch.items() if torch.is_tensor(v) and v.shape == mask.shape and k != "input_ids"
    ]
    rows = []
    for i, ids in enumerate(answer_ids):
        prompt = batch["input_ids"][i][mask[i]]
        answer = torch.tensor(ids, dtype=prompt.dtype)
        row = {
            "input_ids": torch.cat([prompt, answer]),
            "labels": torch.cat([torch.full_like(prompt, IGNORE_INDEX), answer]),
        }
        for key in per_token:
            fill = 1 if key == "attention_mask" else 0
            row[key] = torch.cat(
                [batch[key][i][mask[i]], torch.full_like(answer, fill, dtype=batch[key].dtype)]
            )
        rows.append(row)
    length = max(len(r["input_ids"]) for r in rows)
    pad = {
        "input_ids": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        "labels": IGNORE_INDEX,
    }
    for key in rows[0]:
        batch[key] = torch.stack(
            [
                torch.cat([torch.full((length - len(r[key]),), pad.get(key, 0), dtype=r[key].dtype), r[key]])
                for r in rows
            ]
        )
    return batch
