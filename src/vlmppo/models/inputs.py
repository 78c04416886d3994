"""Model inputs from (image, prompt) pairs, with the family's chat template and left padding.

PPO, SFT, collection and evaluation all build prompts here, so a prompt is tokenized the same way at
generation time and when it is scored again later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image
    from transformers import BatchFeature

    from vlmppo.models.loading import LoadedModel

IGNORE_INDEX = -100  # label value the loss skips (transformers' convention)


def user_turn(prompt_text: str) -> list[dict]:
    """The conversation of one step: a user turn with the image first, then the text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt_text}]}]


def chat_prompt(loaded: LoadedModel, prompt_text: str, *, add_generation_prompt: bool = True) -> str:
    """The templated prompt text, up to and including the generation prompt (e.g. ``ASSISTANT:``).

    The image appears as the family's single placeholder (``<image>``, or Qwen's
    ``<|vision_start|><|image_pad|><|vision_end|>``); the processor expands it to one token per image
    feature.
    """
    return loaded.processor.apply_chat_template(
        user_turn(prompt_text), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def build_inputs(
    loaded: LoadedModel,
    images: list[Image],
    prompts: list[str],
    *,
    answers: list[str] | None = None,
    add_generation_prompt: bool = True,
) -> BatchFeature:
    """Tokenize a batch of single-image user turns (optionally followed by answers), left-padded.

    With `answers`, each row is its prompt's tokens followed by the answer's tokens and the end-of-turn
    (eos) token. The answer is tokenized on its own, so the prompt part is token for token what
    generation saw; ``labels`` holds the answer tokens and `IGNORE_INDEX` elsewhere.

    Args:
        loaded: From `load_model`.
        images: One PIL image per prompt.
        prompts: The user texts (before templating).
        answers: Optional assistant answers, one per prompt, without the end-of-turn token.
        add_generation_prompt: End each prompt with the assistant's turn opener.

    Returns:
        A ``BatchFeature`` of tensors with every key in ``loaded.family.forward_keys``:
        ``input_ids``/``attention_mask`` ``[B, T]`` (left-padded), pixel inputs (Qwen:
        ``pixel_values`` ``[N_patches, C*t*p*p]``, ``image_grid_thw`` ``[B, 3]``; LLaVA:
        ``pixel_values`` ``[B, 3, H, W]``; LLaVA-NeXT: ``pixel_values`` ``[B, N_views, 3, H, W]``,
        ``image_sizes`` ``[B, 2]``), per-token keys such as ``mm_token_type_ids`` ``[B, T]``, and with
        `answers` also ``labels`` ``[B, T]``.
    """
    if len(images) != len(prompts) or (answers is not None and len(answers) != len(prompts)):
        raise ValueError(
            f"build_inputs needs one image (and answer) per prompt; got {len(images)} images, "
            f"{len(prompts)} prompts, {None if answers is None else len(answers)} answers"
        )
    texts = [chat_prompt(loaded, p, add_generation_prompt=add_generation_prompt) for p in prompts]
    batch = loaded.processor(
        images=list(images), text=texts, padding=True, padding_side="left", return_tensors="pt"
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
