"""A prompt batch embedded once: the vision tower and the M-RoPE position index run once per rollout step.

A rollout step samples answers (a prefill over the prompts) and then scores them (a forward over prompt +
answer). Both start the same way: the frames through the vision tower, the image features put in place
of the image placeholder tokens, and for Qwen-VL the 3-D M-RoPE positions of every prompt token (a
Python loop over the batch in ``transformers``). On the Qwen2-VL-2B shape at 128 envs the vision tower
alone took 0.44 s of a step; done twice it was a sixth of the rollout.

``embed_prompts`` does that work once; ``inputs_with_answers`` extends it by answer tokens for the
scoring pass. Both passes then call the model with ``inputs_embeds`` (and explicit positions), which
every supported family accepts, and the results equal the plain path (tested per family).

The embeddings come from the training model; the merged sampling copy (``rl/merged.py``) has the same
embedding table, vision tower and projector (none of them carries LoRA; trained ones are copied over on
every refresh), so they serve its prefill too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmppo.models.vision_cache import image_features


@dataclass
class PromptEmbeddings:
    """Attributes:
    embeds: ``[B, P, H]`` token embeddings with each frame's features in place (model dtype).
    attention_mask: ``[B, P]`` 1 on real tokens, 0 on left padding.
    position_ids: ``[3, B, P]`` M-RoPE positions (Qwen-VL); None where positions are the token index.
    rope_deltas: ``[B]`` M-RoPE offset of text positions: a text token's position is the number of real
        tokens before it plus this (``transformers``' convention); None without M-RoPE.
    """

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None
    rope_deltas: torch.Tensor | None


def backbone_of(model):
    """The ``*Model`` (vision tower + language model, no output layer) of a model or a PEFT model."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model


@torch.no_grad()
def embed_prompts(model, batch) -> PromptEmbeddings:
    """Embed a ``build_inputs`` batch (on the model's device) the way the model's forward would."""
    backbone = backbone_of(model)
    ids = batch["input_ids"]
    embeds = backbone.get_input_embeddings()(ids)
    if batch.get("pixel_values") is not None:
        # Each distinct frame through the tower once while the weights stay the same (models/vision_cache.py).
        features = image_features(backbone, batch).to(embeds.device, embeds.dtype)
        mask = backbone.get_placeholder_mask(ids, inputs_embeds=embeds, image_features=features)
        mask = mask[0] if isinstance(mask, tuple) else mask  # Qwen: (image mask, video mask)
        embeds = embeds.masked_scatter(mask, features)
    positions = deltas = None
    if hasattr(backbone, "get_rope_index") and "mm_token_type_ids" in batch:
        positions, deltas = rope_index(
            backbone, ids, batch["mm_token_type_ids"], batch.get("image_grid_thw"), batch["attention_mask"]
        )
        deltas = deltas.reshape(-1)
    return PromptEmbeddings(embeds, batch["attention_mask"], positions, deltas)


def rope_index(backbone, ids, token_types, grid, attention_mask):
    """``backbone.get_rope_index`` of a batch, run on the host over its distinct rows only.

    transformers computes the M-RoPE index row by row in Python, and on GPU tensors each row waits on the
    GPU several times; a row's positions depend only on its token types, its padding and its frames' grids
    (not on the token ids), and a rollout step's prompts mostly share those. So the rows are grouped by
    them, the index is computed once per group on the host (integer arithmetic: the same values anywhere)
    and copied to every row of the group.
    """
    types, mask = token_types.cpu(), attention_mask.cpu()
    grid = grid.cpu() if grid is not None else None
    if (types > 1).any():  # videos: their own grids and timing; left to transformers as it is
        positions, deltas = backbone.get_rope_index(
            ids, token_types, image_grid_thw=grid, attention_mask=mask
        )
        return positions.to(ids.device), deltas.to(ids.device)
    kept = [row[m.bool()] for row, m in zip(types, mask, strict=True)]
    images = [int(((row[1:] == 1) & (row[:-1] != 1)).sum()) + int(row[:1].eq(1).sum()) for row in kept]
    ends = torch.tensor(images).cumsum(0).tolist()
    grids = [grid[end - n : end] if grid is not None else None for n, end in zip(images, ends, strict=True)]
    keys = [
        (types[b].numpy().tobytes(), mask[b].numpy().tobytes(), g.numpy().tobytes() if g is not None else b"")
        for b, g in enumerate(grids)
    ]
    first_row: dict = {}
    for b, key in enumerate(keys):
        first_row.setdefault(key, b)
    first = list(first_row.values())  # one row per group, in the order the groups first appear
    group = {key: n for n, key in enumerate(first_row)}
    unique_grids = [grids[b] for b in first if grids[b] is not None and len(grids[b])]
    positions, deltas = backbone.get_rope_index(
        ids[first].cpu(),
        types[first],
        image_grid_thw=torch.cat(unique_grids) if unique_grids else None,
        attention_mask=mask[first],
    )
    rows = torch.tensor([group[key] for key in keys])
    return positions[:, rows].to(ids.device), deltas[rows].to(ids.device)


def answer_positions(prompt: PromptEmbeddings, answer_len: int) -> torch.Tensor | None:
    """``[3, B, T]`` M-RoPE positions of ``answer_len`` text tokens after each prompt; None without M-RoPE."""
    if prompt.position_ids is None:
        return None
    real = prompt.attention_mask.sum(dim=1)  # answer token j follows the prompt's real tokens
    steps = torch.arange(answer_len, device=real.device)
    pos = (real + prompt.rope_deltas.to(real))[:, None] + steps[None]
    return pos[None].expand(3, -1, -1)


def inputs_with_answers(model, prompt: PromptEmbeddings, answer_ids, answer_mask) -> dict:
    """Forward keyword arguments for prompt + answer (``answer_ids`` [B, T], ``answer_mask`` [B, T]):
    ``inputs_embeds``, ``attention_mask`` and, for M-RoPE, ``position_ids``; no pixels."""
    backbone = backbone_of(model)
    answers = backbone.get_input_embeddings()(answer_ids).to(prompt.embeds.dtype)
    inputs = {
        "inputs_embeds": torch.cat([prompt.embeds, answers], dim=1),
        "attention_mask": torch.cat([prompt.attention_mask, answer_mask.to(prompt.attention_mask)], dim=1),
    }
    if prompt.position_ids is not None:
        later = answer_positions(prompt, answer_ids.shape[1]).to(prompt.position_ids)
        inputs["position_ids"] = torch.cat([prompt.position_ids, later], dim=2)
    return inputs


def prefill_inputs(prompt: PromptEmbeddings) -> dict:
    """Forward keyword arguments for the prompts alone (the decoder's prefill)."""
    inputs = {"inputs_embeds": prompt.embeds, "attention_mask": prompt.attention_mask}
    if prompt.position_ids is not None:
        inputs["position_ids"] = prompt.position_ids
    return inputs


@dataclass
class Prefill:
    """The prompts' forward through the trained model, shared by the decoder and the scoring pass.

    Attributes:
        cache: The ``transformers`` cache of the prompts' keys/values (every layer).
        hidden: ``[B, H]`` final hidden state of the last prompt token (the value head's input; the output
            layer on it gives the first answer token's logits).
        logits: ``[B, V]`` those logits.
    """

    cache: object
    hidden: torch.Tensor
    logits: torch.Tensor
    state: tuple = ()  # the caller's record of which weights computed it (``ActorCritic.prefill``)


@torch.no_grad()
def run_prefill(model, lm_head, prompt: PromptEmbeddings) -> Prefill:
    """The prompts through ``model``'s backbone with a cache, and the output layer on the last position."""
    out = backbone_of(model)(**prefill_inputs(prompt), use_cache=True)
    hidden = out.last_hidden_state[:, -1].clone()  # not a view: the whole [B, P, H] would stay alive
    return Prefill(out.past_key_values, hidden, lm_head(hidden))


@torch.no_grad()
def answer_hidden_states(model, prompt: PromptEmbeddings, prefill: Prefill, answer_ids, answer_mask):
    """``[B, T, H]``: the final hidden states that predict each of the ``T`` answer tokens, as one forward over
    prompt + answer gives them at positions ``P - 1 … P + T - 2``: the prefill's for the first, and a forward
    of the answer tokens but the last over the prefill's cache for the others (left as it was)."""
    length = answer_ids.shape[1]
    if length == 1:
        return prefill.hidden[:, None]
    backbone = backbone_of(model)
    inputs = {
        "inputs_embeds": backbone.get_input_embeddings()(answer_ids[:, :-1]).to(prompt.embeds.dtype),
        "attention_mask": torch.cat(
            [prompt.attention_mask, answer_mask[:, :-1].to(prompt.attention_mask)], 1
        ),
    }
    if prompt.position_ids is not None:
        inputs["position_ids"] = answer_positions(prompt, length - 1).to(prompt.position_ids)
    out = backbone(**inputs, past_key_values=prefix_cache(prefill.cache), use_cache=True)
    return torch.cat([prefill.hidden[:, None], out.last_hidden_state], dim=1)


def prefix_cache(cache):
    """A ``transformers`` cache over ``cache``'s keys/values that lets a forward attend to them and to its own
    tokens without storing its own: ``cache`` is left as it was, and each layer's joined keys/values are
    freed once that layer has used them (a stored copy would hold every layer's at once)."""
    from transformers.cache_utils import Cache, DynamicLayer

    class PrefixLayer(DynamicLayer):
        def __init__(self, keys, values):
            super().__init__()
            self.keys, self.values, self.is_initialized = keys, values, True
            self.dtype, self.device = keys.dtype, keys.device

        def update(self, key_states, value_states, *args, **kwargs):
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    return Cache(layers=[PrefixLayer(layer.keys, layer.values) for layer in cache.layers])
