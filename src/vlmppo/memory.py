"""Estimated peak GPU memory of a PPO or SFT run, for `vlmppo ppo --dry-run` and `vlmppo plan`.

The model is built on PyTorch's ``meta`` device from its config (no weights are read or allocated), and
wrapped with the same LoRA the run would use, so the parameter counts are exact. Activations follow the
run's real shapes: prompt length (image tokens of the env's frame + text), ``max_new_tokens``,
``n_envs`` (rollout), ``micro_batch_size`` (update). It is an estimate of the largest terms, not a
measurement: compare with `vlmppo bench` on the card (bench/RESULTS.md).

Terms:
- weights: every parameter in the model's dtype (twice with LoRA and ``ppo.merged_sampling``, which samples
  from a merged copy); with ``model.quantization`` the language model's linear weights take 4 or 8 bits plus
  their block constants (``models/quantization.py``), and there is no merged copy;
- trainable state: trainable parameters (LoRA adapters are kept in fp32 by peft) + their gradients + two
  AdamW moments, all in the trainable dtype; the value head likewise (none with ``ppo.advantage`` grpo/gigpo);
- rollout: the scoring pass's KV cache of all envs' prompts and answers (plus, with transformers' ``generate``,
  the cache that grows by concatenation to the whole answer, twice at the moment it grows), one layer's
  activations of the no-grad prefill/scoring forwards over all envs, and one chunk of the scoring
  pass's fp32 answer logits (``rl/policy.py`` scores a few rows at a time);
- decoder buffers (``model.decoder=static``, the default on a GPU): the static KV cache of all envs and the
  memory pool of the captured decode steps (`decoder_buffer_bytes`), kept between rollouts, so they sit beside
  the update's peak too;
- update: the saved activations of one micro-batch through the decoder (≈ 8·h + 3·I values per token and
  layer in the model dtype, plus what each LoRA adapter keeps of its input: a bf16 copy on a plain base, none
  on a quantised one, see `adapter_input_bytes`; with gradient checkpointing one h per layer plus one full
  layer recomputed), and its answer logits at the start of the backward (`answer_logit_bytes`). PPO trains
  without dropout whatever ``lora.dropout`` says, SFT with it;
- a quantised base also has one dequantised copy of its largest layer live during its matmuls.

Checked on an H200 with `bench/gpu_ppo.sh` (Qwen2-VL-2B shape, LoRA r=128 with a merged sampling copy, the
static decoder, micro-batch 8, 128 new tokens; 2026-12-03, bench/RESULTS.md): the run's peak
(`torch.cuda.max_memory_allocated`) was 24.6 GiB at 32 envs and 25.9 GiB at 128; the resident and update terms
here sum to 24.3 and 25.9 before the overhead factor (26.8 and 28.5 GiB with it, 9–10% above; the rollout's
terms sum to 13.5 and 18.9), with the ~321-token prompts estimated for Qwen's tokenizer where the run's
borrowed tiny tokenizer made 340. `bench/gpu_quant.py`'s first run (bench/results/h200-quant-24gb.md) ran its
cases in one process while every model sampled from with the static decoder stayed alive (fixed since), so
only its first row is clean: 2B 4-bit PPO 17.2 GiB measured, 16.2 estimated; less the models earlier rows left
behind (by their sizes), the others' estimates are 5–8% above the peaks, the LLaVA-1.6-7B bf16 rows included
(bench/RESULTS.md).
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
    stage: str = "ppo"

    @property
    def peak_gb(self) -> float:
        resident = self.weights_gb + self.sampler_gb + self.decoder_gb + self.trainable_state_gb
        return OVERHEAD * (resident + max(self.rollout_gb, self.update_gb))

    def describe(self) -> str:
        if self.stage == "sft":
            return (
                f"~{_size(self.peak_gb)} per GPU (weights {_size(self.weights_gb)}, trainable + AdamW "
                f"{_size(self.trainable_state_gb)}, activations + logits of one micro-batch "
                f"{_size(self.update_gb)}; {_count(self.params)} params, {_count(self.trainable)} trainable, "
                f"~{self.prompt_tokens} tokens per sample)"
            )
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


def estimate_prompt_budget(cfg, max_new_tokens: int):
    """The prompt budget of ``cfg`` (``models.budget.PromptBudget``) from the model's config alone, for a model
    whose processor is not available offline: the frame's image tokens by the family's resizing rules, ~200
    tokens of task text and ~10 of template per earlier turn. None without the config either."""
    from vlmppo.models.budget import PromptBudget, context_length
    from vlmppo.models.loading import load_model_config

    config = load_model_config(cfg.model)
    if config is None:
        return None
    m, turns = cfg.model, cfg.env.history
    size = frame_size(cfg)
    frame = image_tokens(config, m.family, size[0], size[1], m.min_pixels, m.max_pixels)
    return PromptBudget(
        history=turns,
        image_tokens=frame,
        text_tokens=200 + 10 * turns,
        turn_tokens=frame + 10 + max_new_tokens,
        answer_tokens=max_new_tokens,
        context=context_length(config),
        estimated=True,
    )


def count_parameters(config, family_name: str, lora) -> tuple[int, int]:
    """(all parameters, trainable parameters) of the model as the run builds it, on the meta device."""
    sizes = count_model(config, family_name, lora)
    return sizes.total, sizes.trainable


@dataclass(frozen=True)
class ModelCounts:
    """Parameter counts of the model a run builds (meta device): all, trainable, and those in the linear layers
    a ``model.quantization`` would quantise (``models/quantization.py``)."""

    total: int
    trainable: int
    quantizable: int


def count_model(config, family_name: str, lora) -> ModelCounts:
    import torch
    from transformers import AutoModelForImageTextToText

    from vlmppo.models.loading import apply_lora
    from vlmppo.models.quantization import quantized_linear_names
    from vlmppo.models.tiny import get_family

    family = get_family(family_name)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
        total = sum(p.numel() for p in model.parameters())
        names = set(quantized_linear_names(model, family))
        quantizable = sum(m.weight.numel() for n, m in model.named_modules() if n in names)
        if lora is None:
            return ModelCounts(total, total, quantizable)
        model = apply_lora(model, family, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelCounts(total, trainable, quantizable)


@dataclass(frozen=True)
class ModelFacts:
    """What the estimates read of the model: its transformers config and parameter counts (computed once: a
    planner asks for hundreds of estimates of one model)."""

    config: object
    counts: ModelCounts
    prompt_tokens: int


def model_facts(cfg) -> ModelFacts | None:
    """The facts of ``cfg.model`` (and of its prompt, from ``cfg.env``); None when the model's config is not
    available offline."""
    from vlmppo.models.loading import load_model_config

    config = load_model_config(cfg.model)
    if config is None:
        return None
    counts = count_model(config, cfg.model.family, cfg.model.lora)
    return ModelFacts(config, counts, prompt_length(cfg, config))


def weight_bytes(cfg, counts: ModelCounts) -> tuple[float, float]:
    """(bytes of the weights as loaded, bytes per value of the model dtype): a quantised base stores its
    language model's linear weights in 4 or 8 bits, the rest in the model dtype."""
    from vlmppo.models.quantization import bytes_per_quantized_weight

    m = cfg.model
    bpw = 4 if m.dtype == "float32" else 2
    if not m.quantization:
        return counts.total * bpw, bpw
    q = bytes_per_quantized_weight(m.quantization, m.double_quant)
    return counts.quantizable * q + (counts.total - counts.quantizable) * bpw, bpw


def trainable_state_bytes(cfg, counts: ModelCounts, bpw: int) -> float:
    """Trainable weights + gradients + two AdamW moments (the value head is `value_head_bytes`)."""
    if cfg.model.lora is not None:  # adapters in fp32 (peft upcasts them): value, gradient, two AdamW moments
        return counts.trainable * 4 * 4
    return counts.total * bpw * 3  # the weights are counted already: gradient and two moments


def value_head_bytes(hidden: int) -> int:
    """The fp32 value head's weights, gradients and two AdamW moments."""
    return (hidden * 1024 + 1024 + 1024 * 512 + 512 + 513) * 16


def frame_size(cfg) -> tuple[int, int]:
    """The env's frame size; 300x300 for a plugin that fails to load (the stage itself will say why)."""
    from vlmppo.envs import list_envs

    return next(
        (e["frame_size"] for e in list_envs() if e["id"] == cfg.env.id and e["frame_size"]), (300, 300)
    )


def prompt_length(cfg, config) -> int:
    """Tokens of one prompt: the env frame's image tokens + ~200 of task text; with ``env.history``, K more
    frames and answers (and ~10 template tokens per turn)."""
    m = cfg.model
    size = frame_size(cfg)
    frame = image_tokens(config, m.family, size[0], size[1], m.min_pixels, m.max_pixels)
    return frame + 200 + cfg.env.history * (frame + cfg.ppo.max_new_tokens + 10)


def layer_values(cfg, text, bpw: int, mixed_precision: str, dropout: float) -> float:
    """Bytes one token keeps per decoder layer for the backward (no gradient checkpointing): ≈ 8·h + 3·I
    values in the model dtype, plus what each LoRA-adapted linear keeps of its input
    (`adapter_input_bytes`: measured 3.8 GiB less on the 2B shape at micro-batch 8 with bf16 autocast than
    without, which that term predicts). ``dropout``: the rate the stage trains with (PPO: 0)."""
    from vlmppo.accel import precision_for

    hidden, inter = text.hidden_size, text.intermediate_size
    values = (8 * hidden + 3 * inter) * bpw
    if cfg.model.lora is not None:  # q, k, v, o, gate, up see h values, down sees I
        bf16 = precision_for(mixed_precision, "cuda") == "bf16"
        values += (6 * hidden + inter) * adapter_input_bytes(cfg.model.quantization, bf16, dropout)
    return values


def adapter_input_bytes(quantization: str | None, bf16_autocast: bool, dropout: float) -> int:
    """Bytes per input value a LoRA-adapted linear keeps for the backward beyond its base layer's input.

    peft's plain LoRA layer casts the input to the fp32 adapter dtype; under bf16 autocast ``lora_A`` then
    keeps the bf16 copy autocast makes of that (2 bytes), without autocast the fp32 copy itself (4). peft's
    bitsandbytes layers skip that cast under autocast, so ``lora_A`` reads the base layer's own bf16 input
    and keeps nothing more (0). Dropout (SFT; PPO sets it to 0, which returns the input itself) adds its
    1-byte mask, and on a quantised base its own bf16 output, which ``lora_A`` keeps instead (2 + 1).
    """
    if quantization and bf16_autocast:
        return 3 if dropout else 0
    return (2 if bf16_autocast else 4) + (1 if dropout else 0)


def dequantized_weight_bytes(cfg, text) -> int:
    """bitsandbytes multiplies by a quantised weight after dequantising it whole to the compute dtype (for
    any input of more than one token, and in every backward): one such copy of the largest quantised layer
    (an MLP projection, h × I) is live at a time. 0 for an unquantised base."""
    return text.hidden_size * text.intermediate_size * 2 if cfg.model.quantization else 0


def answer_logit_bytes(bpw: int) -> int:
    """Bytes per value of the update's answer logits ``[micro-batch, answer, V]`` at their peak (the first
    steps of the backward, `rl/logprob.py: token_logprobs`): the output layer's logits in the model dtype
    (placeholder ids filled with -inf in a copy, the first freed), the fp32 ``logits / T`` that
    ``logsumexp`` keeps, and in its backward ``exp(x − lse)``, its product with the incoming gradient and
    the gradient ``gather`` adds in: four fp32 tensors of that size beside the model-dtype one."""
    return bpw + 4 * 4


def activation_bytes(cfg, text, tokens: int, per_token_layer: float, bpw: int) -> float:
    """The saved activations of ``tokens`` tokens (a micro-batch) through the decoder; with gradient
    checkpointing one h per layer plus one full layer recomputed."""
    layers = text.num_hidden_layers
    if cfg.model.gradient_checkpointing:
        return tokens * (layers * text.hidden_size * bpw + per_token_layer)
    return tokens * layers * per_token_layer


def decoder_buffer_bytes(envs: int, seq: int, kv_token: int, vocab: int, bpw: int) -> int:
    """What the static decoder keeps between rollouts (``models/static_decode.py``): its K/V buffers for every
    env over prompt + answer (positions rounded up to 64), and the private memory pool of its captured decode
    steps, which holds one step's sampling intermediates at its largest bucket (all envs): the logits in the
    model dtype, and in fp32 the scores, their log-softmax, its exp and the cumulative sum the inverse-CDF draw
    searches (``sample_from_logits``): ``bpw + 4·4`` bytes per env and vocabulary entry. Smaller buckets'
    captures reuse that pool."""
    return envs * (-(-seq // 64) * 64) * kv_token + envs * vocab * (bpw + 4 * 4)


def data_parallel_state(trainable_state: float, launch: str, world: int) -> float:
    """Bytes of trainable state per GPU under data parallelism, from the one-process value (value, gradient,
    two moments: four equal parts)."""
    part = trainable_state / 4
    if launch == "zero2":
        return part + 3 * part / world
    return trainable_state + part  # DDP's gradient buckets


def estimate_ppo_memory(cfg, facts: ModelFacts | None = None, world: int = 1) -> MemoryEstimate | None:
    """The estimate for ``cfg``'s PPO run per GPU; None when the model's config is not available offline.

    ``facts``: the model's `model_facts` when the caller has them (they depend on ``model.path``, ``family``
    and ``lora`` only). ``world`` > 1 (data parallel): every GPU holds the whole model and its own envs'
    activations; DDP adds a bucket copy of the trainable gradients for its all-reduce, and ZeRO-2
    (``ppo.launch=zero2``) shards the gradients and AdamW moments over the ranks (the fp32 trainable values
    stay whole on each).
    """
    facts = facts or model_facts(cfg)
    if facts is None:
        return None
    config, counts = facts.config, facts.counts
    m, p = cfg.model, cfg.ppo
    text = _text(config)
    hidden, layers = text.hidden_size, text.num_hidden_layers
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    inter, vocab = text.intermediate_size, text.vocab_size
    prompt = facts.prompt_tokens
    weights, bpw = weight_bytes(cfg, counts)
    trainable_state = trainable_state_bytes(cfg, counts, bpw)
    if p.advantage == "gae":  # GRPO/GiGPO have no value head
        trainable_state += value_head_bytes(hidden)
    if world > 1:
        trainable_state = data_parallel_state(trainable_state, p.launch, world)
    seq, answer, envs = prompt + p.max_new_tokens, p.max_new_tokens, cfg.env.n_envs
    kv_token = 2 * layers * kv_heads * head_dim * bpw
    from vlmppo.models.generation import resolve_decoder
    from vlmppo.rl.policy import SCORE_CHUNK_VALUES

    static = resolve_decoder(m.decoder, "cuda").startswith("static")
    decoder_buffers = decoder_buffer_bytes(envs, seq, kv_token, vocab, bpw) if static else 0
    growing_cache = 0 if static else 2 * envs * seq * kv_token
    no_grad_layer = envs * seq * (3 * inter + 4 * hidden) * bpw  # gate, up, act; residual, norm, attention
    # The rollout's largest K/V: the scoring pass's forward over prompt + answer keeps every layer's keys and
    # values until it returns (the language model's use_cache defaults on, and ActorCritic.score does not turn
    # it off); the prefill's cache over the prompts alone is freed before it, generate's growing one too.
    scoring_cache = envs * seq * kv_token
    rollout = max(scoring_cache, growing_cache) + no_grad_layer + SCORE_CHUNK_VALUES * (bpw + 8)
    rollout += dequantized_weight_bytes(cfg, text)
    mb = p.micro_batch_size
    # PPO trains without dropout (rl/startup.py: disable_dropout), whatever lora.dropout says
    per_token_layer = layer_values(cfg, text, bpw, p.mixed_precision, 0.0)
    update = activation_bytes(cfg, text, seq * mb, per_token_layer, bpw)
    update += mb * answer * vocab * answer_logit_bytes(bpw) + dequantized_weight_bytes(cfg, text)
    # ppo.merged_sampling (auto = on, on a GPU, unless the base is quantised): one more copy, merged
    from vlmppo.rl.startup import uses_merged_sampling

    merged = uses_merged_sampling(cfg, "cuda")
    return MemoryEstimate(
        params=counts.total,
        trainable=counts.trainable,
        prompt_tokens=prompt,
        weights_gb=weights / GIB,
        trainable_state_gb=trainable_state / GIB,
        rollout_gb=rollout / GIB,
        decoder_gb=decoder_buffers / GIB,
        update_gb=update / GIB,
        sampler_gb=counts.total * bpw / GIB if merged else 0.0,
    )


SFT_ANSWER_TOKENS = 256


def sft_tokens(cfg, prompt_tokens: int) -> int:
    """Tokens of one SFT sample as estimated: the prompt + a 256-token answer, at most ``sft.max_length``."""
    return min(cfg.sft.max_length, prompt_tokens + SFT_ANSWER_TOKENS)


def estimate_sft_memory(cfg, facts: ModelFacts | None = None) -> MemoryEstimate | None:
    """The estimate for ``cfg``'s SFT run on one GPU (``sft.launch=single``; DDP holds the same per GPU):
    weights, trainable state, and one micro-batch of ``sft.batch_size`` samples of `sft_tokens` tokens
    (saved activations, the full ``[B, T, V]`` logits in the model dtype and their gradient). None when the
    model's config is not available offline. ``rollout_gb`` is 0 (there is none)."""
    facts = facts or model_facts(cfg)
    if facts is None:
        return None
    config, counts = facts.config, facts.counts
    text = _text(config)
    weights, bpw = weight_bytes(cfg, counts)
    tokens = sft_tokens(cfg, facts.prompt_tokens)
    dropout = cfg.model.lora.dropout if cfg.model.lora is not None else 0.0
    per_token_layer = layer_values(cfg, text, bpw, "auto", dropout)
    batch = cfg.sft.batch_size
    update = activation_bytes(cfg, text, tokens * batch, per_token_layer, bpw)
    update += batch * tokens * text.vocab_size * bpw * 2  # logits and their gradient
    update += dequantized_weight_bytes(cfg, text)
    return MemoryEstimate(
        params=counts.total,
        trainable=counts.trainable,
        prompt_tokens=tokens,
        weights_gb=weights / GIB,
        trainable_state_gb=trainable_state_bytes(cfg, counts, bpw) / GIB,
        rollout_gb=0.0,
        update_gb=update / GIB,
        stage="sft",
    )
