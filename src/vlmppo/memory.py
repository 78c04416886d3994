"""Estimated peak GPU memory of a PPO run, for `vlmppo ppo --dry-run`.

The model is built on PyTorch's ``meta`` device from its config (no weights are read or allocated), and
wrapped with the same LoRA the run would use, so the parameter counts are exact. Activations follow the
run's real shapes: prompt length (image tokens of the env's frame + text), ``max_new_tokens``,
``n_envs`` (rollout), ``micro_batch_size`` (update). It is an estimate of the largest terms, not a
measurement: compare with `vlmppo bench` on the card (bench/RESULTS.md).

Terms:
- weights: every parameter in the model's dtype (twice with LoRA and ``ppo.merged_sampling``, which samples
  from a merged copy);
- trainable state: trainable parameters (LoRA adapters are kept in fp32 by peft) + their gradients + two
  AdamW moments, all in the trainable dtype; the value head likewise;
- rollout: the prefill's KV cache of all envs' prompts (plus, with transformers' ``generate``, the cache
  that grows by concatenation to the whole answer, twice at the moment it grows), one layer's
  activations of the no-grad prefill/scoring forwards over all envs, and one chunk of the scoring
  pass's fp32 answer logits (``rl/policy.py`` scores a few rows at a time);
- decoder buffers (``model.decoder=static``, the default on a GPU): the static KV cache of all envs,
  kept between rollouts, so it sits beside the update's peak too;
- update: the saved activations of one micro-batch through the decoder (≈ 8·h + 3·I values per token and
  layer in the model dtype, plus the fp32 inputs peft keeps for each LoRA adapter; with gradient
  checkpointing one h per layer plus one full layer), and its answer logits in the model dtype, in fp32,
  and their gradient.

Checked on an H200 with `bench/gpu_ppo.sh` (Qwen2-VL-2B shape, LoRA r=128, 32 envs, micro-batch 8, 128 new
tokens): `torch.cuda.max_memory_allocated` 26.3 GiB, against 25.5 GiB here before the overhead factor for
the run's 374-token prompts (the tiny tokenizer it borrows spells the text out longer than Qwen's; with the
~321 tokens estimated for Qwen's own, 23.6) — bench/results/gpu_ppo_h200.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 2**30
OVERHEAD = 1.10  # CUDA context, allocator fragmentation, small buffers


@dataclass
class MemoryEstimate:
    params: int
    trainable: int
    prompt_tokens: int
    weights_gb: float
    trainable_state_gb: float
    rollout_gb: float
    update_gb: float
    sampler_gb: float = 0.0
    decoder_gb: float = 0.0

    @property
    def peak_gb(self) -> float:
        resident = self.weights_gb + self.sampler_gb + self.decoder_gb + self.trainable_state_gb
        return OVERHEAD * (resident + max(self.rollout_gb, self.update_gb))

    def describe(self) -> str:
        return (
            f"~{_size(self.peak_gb)} per GPU (weights {_size(self.weights_gb)}"
            + (f" + merged sampling copy {_size(self.sampler_gb)}" if self.sampler_gb else "")
            + (f" + static KV cache {_size(self.decoder_gb)}" if self.decoder_gb else "")
            + f", trainable + AdamW "
            f"{_size(self.trainable_state_gb)}, rollout prefill/scoring {_size(self.rollout_gb)}, update activations "
            f"{_size(self.update_gb)}; {_count(self.params)} params, {_count(self.trainable)} trainable, "
            f"~{self.prompt_tokens} prompt tokens)"
        )


def _size(gib: float) -> str:
    return f"{gib:.1f} GiB" if gib >= 1 else f"{gib * 1024:.0f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _text(config):
    return getattr(config, "text_config", None) or config


def image_tokens(
    config, family: str, height: int, width: int, min_pixels: int | None, max_pixels: int | None
) -> int:
    """Image tokens the processor makes of an H×W frame (the families' documented resizing rules)."""
    if family.startswith("qwen"):
        vision = config.vision_config
        unit = vision.patch_size * vision.spatial_merge_size  # 28: one token per 28×28 pixels
        lo, hi = min_pixels or 56 * 56, max_pixels or 28 * 28 * 1280
        h, w = max(unit, round(height / unit) * unit), max(unit, round(width / unit) * unit)
        if h * w > hi:
            scale = math.sqrt(height * width / hi)
            h, w = (
                max(unit, math.floor(height / scale / unit) * unit),
                max(unit, math.floor(width / scale / unit) * unit),
            )
        elif h * w < lo:
            scale = math.sqrt(lo / (height * width))
            h, w = math.ceil(height * scale / unit) * unit, math.ceil(width * scale / unit) * unit
        return (h // unit) * (w // unit)
    vision = config.vision_config
    base = (vision.image_size // vision.patch_size) ** 2
    if family == "llava":
        return base
    # LLaVA-NeXT "anyres": the base view plus the tiles of the best grid (at most 2×2 for the released
    # grids), with one newline token per row of features: an upper estimate.
    side = vision.image_size // vision.patch_size
    tiles_h, tiles_w = (2, 2) if max(height, width) > vision.image_size else (1, 1)
    return base + (tiles_h * side) * (tiles_w * side) + tiles_h * side


def count_parameters(config, family_name: str, lora) -> tuple[int, int]:
    """(all parameters, trainable parameters) of the model as the run builds it, on the meta device."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vlmppo.models.loading import apply_lora
    from vlmppo.models.tiny import get_family

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
        total = sum(p.numel() for p in model.parameters())
        if lora is None:
            return total, total
        model = apply_lora(model, get_family(family_name), lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def data_parallel_state(trainable_state: float, launch: str, world: int) -> float:
    """Bytes of trainable state per GPU under data parallelism, from the one-process value (value, gradient,
    two moments: four equal parts)."""
    part = trainable_state / 4
    if launch == "zero2":
        return part + 3 * part / world
    return trainable_state + part  # DDP's gradient buckets


def estimate_ppo_memory(cfg, world: int = 1) -> MemoryEstimate | None:
    """The estimate for ``cfg``'s PPO run per GPU; None when the model's config is not available offline.

    ``world`` > 1 (data parallel): every GPU holds the whole model and its own envs' activations; DDP adds a
    bucket copy of the trainable gradients for its all-reduce, and ZeRO-2 (``ppo.launch=zero2``) shards the
    gradients and AdamW moments over the ranks (the fp32 trainable values stay whole on each).
    """
    from vlmppo.envs import list_envs
    from vlmppo.models.loading import load_model_config

    config = load_model_config(cfg.model)
    if config is None:
        return None
    m, p = cfg.model, cfg.ppo
    text = _text(config)
    hidden, layers = text.hidden_size, text.num_hidden_layers
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    inter, vocab = text.intermediate_size, text.vocab_size
    size = next((e["frame_size"] for e in list_envs() if e["id"] == cfg.env.id), (300, 300))
    prompt = image_tokens(config, m.family, size[0], size[1], m.min_pixels, m.max_pixels) + 200  # + task text
    total, trainable = count_parameters(config, m.family, m.lora)
    bpw = 4 if m.dtype == "float32" else 2
    if m.lora is not None:  # adapters in fp32 (peft upcasts them): value, gradient, two AdamW moments
        trainable_state = trainable * 4 * 4
    else:  # the weights are counted already: gradient and two moments in the model dtype
        trainable_state = total * bpw * 3
    trainable_state += (hidden * 1024 + 1024 + 1024 * 512 + 512 + 513) * 16  # value head, fp32
    if world > 1:
        trainable_state = data_parallel_state(trainable_state, p.launch, world)
    seq, answer, envs = prompt + p.max_new_tokens, p.max_new_tokens, cfg.env.n_envs
    kv_token = 2 * layers * kv_heads * head_dim * bpw
    from vlmppo.models.generation import resolve_decoder
    from vlmppo.rl.policy import SCORE_CHUNK_VALUES

    static = resolve_decoder(m.decoder, "cuda").startswith("static")
    decoder_buffers = envs * (-(-seq // 64) * 64) * kv_token if static else 0
    growing_cache = 0 if static else 2 * envs * seq * kv_token
    no_grad_layer = envs * seq * (3 * inter + 4 * hidden) * bpw  # gate, up, act; residual, norm, attention
    rollout = envs * prompt * kv_token + growing_cache + no_grad_layer + SCORE_CHUNK_VALUES * (bpw + 8)
    mb = p.micro_batch_size
    layer_values = (8 * hidden + 3 * inter) * bpw  # per token: projections' inputs, norms, MLP activations
    if m.lora is not None:
        # Each adapted linear keeps its input for the backward (plus a dropout mask with dropout on): q, k,
        # v, o, gate, up see h values, down sees I. peft casts it to the fp32 adapter dtype; under bf16
        # autocast (ppo.mixed_precision, on by default on a GPU) the kept copy is bf16 (measured: 3.8 GiB
        # less on the 2B shape at micro-batch 8, which this term predicts).
        from vlmppo.accel import precision_for

        kept = 2 if precision_for(p.mixed_precision, "cuda") == "bf16" else 4
        layer_values += (6 * hidden + inter) * (kept + (1 if m.lora.dropout else 0))
    per_layer = seq * mb * (hidden * bpw if m.gradient_checkpointing else layer_values)
    full_layer = seq * mb * layer_values
    update = (
        layers * per_layer + (full_layer if m.gradient_checkpointing else 0) + mb * answer * vocab * (bpw + 8)
    )
    return MemoryEstimate(
        params=total,
        trainable=trainable,
        prompt_tokens=prompt,
        weights_gb=total * bpw / GIB,
        trainable_state_gb=trainable_state / GIB,
        rollout_gb=rollout / GIB,
        decoder_gb=decoder_buffers / GIB,
        update_gb=update / GIB,
        # ppo.merged_sampling (auto = on, on a GPU): one more copy of the weights, merged, for generate
        sampler_gb=total * bpw / GIB if m.lora is not None and p.merged_sampling is not False else 0.0,
    )
