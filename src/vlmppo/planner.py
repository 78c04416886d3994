"""`vlmppo plan`: the settings that fit a GPU of a given size, from the dry-run's memory model.

For every combination of quantisation (none, 4bit), gradient checkpointing, merged sampling, env count and
PPO micro-batch, the planner builds the config those settings give, estimates its peak memory per GPU
(``vlmppo.memory``: the same estimate ``--dry-run`` prints, checked against measured peaks in
bench/RESULTS.md) and its env-steps/s (`throughput`, a model fitted to the bench's H200 figures), keeps the
settings whose PPO *and* SFT peaks fit the card with a margin, and proposes the fastest. Ties go to the
unquantised base, then to more envs. What it proposes is a list of ``key=value`` overrides that the
config re-validates (tests check that the pasted line loads and that its estimate fits).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from vlmppo.config.loader import deep_merge, overrides_to_dict
from vlmppo.config.schema import Config
from vlmppo.memory import ModelFacts, estimate_ppo_memory, estimate_sft_memory, model_facts

ENV_COUNTS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256)
MICRO_BATCHES = (32, 16, 8, 4, 2, 1)

# The throughput model, fitted to bench/RESULTS.md (one H200; Qwen2-VL-2B shape, LoRA r=128, static decoder,
# merged sampling, answers forced to 128 tokens): a decode position takes 5.4 ms at 32 envs and 8.0 ms at 128
# (DECODE_MS_BASE + DECODE_MS_PER_ENV * n), and each env adds ~16 ms per step of processor, scoring, parsing
# and env work; the update ran 33 samples/s at micro-batch 8 (502 tokens a sample).
REFERENCE_PARAMS = 2.21e9
REFERENCE_LAYERS = 28
REFERENCE_TOKENS = 502
DECODE_MS_BASE = 4.53
DECODE_MS_PER_ENV = 0.0271
HOST_S_PER_ENV = 0.010  # processor, parsing, env step: independent of the model size
SCORE_S_PER_ENV = 0.0057  # the scoring pass at the reference size (scales with params x tokens)
UPDATE_SAMPLES_PER_S = 33.0  # at micro-batch 8
# Not measured yet (bench/gpu_quant.py measures them): decoding through an unmerged adapter (measured 2x with
# transformers' generate; CUDA graphs hide part of the launches), a 4-bit base's dequantisation in every
# linear, and gradient checkpointing's second forward.
UNMERGED_DECODE = 1.6
QUANT_DECODE = 1.5
QUANT_UPDATE = 1.25
CHECKPOINTING_UPDATE = 1.33


@dataclass
class Candidate:
    """One setting the planner tried: its overrides, estimated peaks per GPU and env-steps/s (all GPUs)."""

    overrides: list[str]
    settings: dict
    ppo_peak_gb: float
    sft_peak_gb: float
    env_steps_per_s: float

    @property
    def peak_gb(self) -> float:
        return max(self.ppo_peak_gb, self.sft_peak_gb)


@dataclass
class Plan:
    """The planner's answer: the chosen candidate (None when nothing fits) and the smallest one tried."""

    gpu_mem_gb: float
    gpus: int
    margin: float
    chosen: Candidate | None
    smallest: Candidate | None
    tried: int
    notes: list[str] = field(default_factory=list)

    @property
    def budget_gb(self) -> float:
        return self.gpu_mem_gb * (1 - self.margin)


def with_overrides(cfg: Config, overrides: list[str]) -> Config | None:
    """``cfg`` with dotted overrides applied and validated again; None when the result is invalid."""
    try:
        return Config.model_validate(deep_merge(cfg.model_dump(), overrides_to_dict(overrides)))
    except ValueError:  # pydantic's ValidationError is a ValueError
        return None


def throughput(cfg: Config, facts: ModelFacts, n_envs_per_gpu: int, gpus: int) -> float:
    """Expected env-steps/s of ``cfg``'s PPO loop (rollout and update) on H200-class GPUs, full-length answers.

    A ranking of settings more than a promise: a consumer card is slower by its bandwidth and compute.
    """
    from vlmppo.memory import _text
    from vlmppo.rl.startup import uses_merged_sampling

    m, p = cfg.model, cfg.ppo
    text = _text(facts.config)
    size = facts.counts.total / REFERENCE_PARAMS
    tokens = (facts.prompt_tokens + p.max_new_tokens) / REFERENCE_TOKENS
    decode_ms = (
        DECODE_MS_BASE * text.num_hidden_layers / REFERENCE_LAYERS + DECODE_MS_PER_ENV * n_envs_per_gpu * size
    )
    if m.lora is not None and not uses_merged_sampling(cfg, "cuda"):
        decode_ms *= UNMERGED_DECODE
    if m.quantization:
        decode_ms *= QUANT_DECODE
    rollout_s = p.max_new_tokens * decode_ms / 1000 + n_envs_per_gpu * (
        HOST_S_PER_ENV + SCORE_S_PER_ENV * size * tokens
    )
    micro = p.micro_batch_size
    samples_per_s = UPDATE_SAMPLES_PER_S / (size * tokens) * (micro / (micro + 2)) / (8 / 10)
    if m.gradient_checkpointing:
        samples_per_s /= CHECKPOINTING_UPDATE
    if m.quantization:
        samples_per_s /= QUANT_UPDATE
    update_s = n_envs_per_gpu * p.n_epochs / samples_per_s  # per rollout step of every env
    return gpus * n_envs_per_gpu / (rollout_s + update_s)


def candidate_settings(cfg: Config, gpus: int, max_envs: int, quantizations) -> list[dict]:
    """Every combination to try (as the config values it sets); the SFT batch is fitted later."""
    lora = cfg.model.lora is not None
    out = []
    for quant, ckpt, merged, n_per_gpu, micro in itertools.product(
        quantizations, (False, True), (True, False), ENV_COUNTS, MICRO_BATCHES
    ):
        if n_per_gpu * gpus > max_envs or (merged and (quant or not lora)):
            continue
        rollout = n_per_gpu * gpus * cfg.ppo.n_steps
        minibatch = min(cfg.ppo.minibatch_size, rollout)
        minibatch -= minibatch % micro  # a whole number of micro-batches
        if minibatch == 0:
            continue
        settings = {
            "model.quantization": quant,
            "model.gradient_checkpointing": ckpt,
            "env.n_envs": n_per_gpu * gpus,
            "ppo.micro_batch_size": micro,
            "ppo.minibatch_size": minibatch,
        }
        if lora:
            settings["ppo.merged_sampling"] = merged
        out.append(settings)
    return out


def as_overrides(cfg: Config, settings: dict) -> list[str]:
    """The ``key=value`` overrides of ``settings`` that change ``cfg`` (YAML spelling: null, true, false)."""
    current = cfg.model_dump()
    out = []
    for key, value in settings.items():
        section, name = key.split(".")
        old = current[section][name]
        if old == value and type(old) is type(value):
            continue
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        out.append(f"{key}={text}")
    return out


def fit_sft_batch(cfg: Config, facts: ModelFacts, budget_gb: float) -> tuple[list[str], float]:
    """The largest ``sft.batch_size`` (at most the config's) whose SFT estimate fits, with ``sft.grad_accum``
    raised to keep the samples per optimizer step; ([], peak) when the config's own batch fits."""
    sft = cfg.sft
    per_step = sft.batch_size * sft.grad_accum
    batch = sft.batch_size
    while True:
        trial = cfg if batch == sft.batch_size else with_overrides(cfg, [f"sft.batch_size={batch}"])
        peak = estimate_sft_memory(trial, facts).peak_gb
        if peak <= budget_gb or batch == 1:
            break
        batch //= 2
    if batch == sft.batch_size:
        return [], peak
    return [f"sft.batch_size={batch}", f"sft.grad_accum={max(1, -(-per_step // batch))}"], peak


def plan_for_gpu(
    cfg: Config, gpu_mem_gb: float, *, gpus: int = 1, margin: float = 0.1, max_envs: int = 128,
    quantization: str = "auto", facts: ModelFacts | None = None,
) -> Plan | None:  # fmt: skip
    """The fastest settings whose PPO and SFT peaks per GPU fit ``gpu_mem_gb`` less ``margin`` (a fraction).

    Args:
        quantization: ``auto`` tries none and 4bit (and the config's own, e.g. 8bit); ``none``, ``4bit`` or
            ``8bit`` fix it.

        facts: ``model_facts(cfg)``, when the caller has them.

    Returns:
        The plan, or None when the model's config is not available offline.
    """
    facts = facts or model_facts(cfg)
    if facts is None:
        return None
    lora = cfg.model.lora is not None
    if quantization == "auto":
        quants = [None, "4bit"] if lora else [None]
        if cfg.model.quantization and cfg.model.quantization not in quants:
            quants.append(cfg.model.quantization)
    else:
        quants = [None if quantization == "none" else quantization]
    budget = gpu_mem_gb * (1 - margin)
    chosen = smallest = None
    tried = 0
    sft_fits: dict[tuple, tuple[list[str], float]] = {}  # SFT depends on the model settings only
    for settings in candidate_settings(cfg, gpus, max_envs, quants):
        overrides = as_overrides(cfg, settings)
        trial = with_overrides(cfg, overrides)
        if trial is None:
            continue
        tried += 1
        n_per_gpu = settings["env.n_envs"] // gpus
        per_gpu = trial.model_copy(update={"env": trial.env.model_copy(update={"n_envs": n_per_gpu})})
        ppo_peak = estimate_ppo_memory(per_gpu, facts).peak_gb
        key = (settings["model.quantization"], settings["model.gradient_checkpointing"])
        if key not in sft_fits:
            sft_fits[key] = fit_sft_batch(trial, facts, budget)
        sft_overrides, sft_peak = sft_fits[key]
        speed = throughput(trial, facts, n_per_gpu, gpus)
        candidate = Candidate(overrides + sft_overrides, settings, ppo_peak, sft_peak, speed)
        if smallest is None or candidate.peak_gb < smallest.peak_gb:
            smallest = candidate
        if candidate.peak_gb <= budget and (chosen is None or _better(candidate, chosen)):
            chosen = candidate
    plan = Plan(gpu_mem_gb, gpus, margin, chosen, smallest, tried)
    plan.notes = plan_notes(cfg, plan)
    return plan


def _better(a: Candidate, b: Candidate) -> bool:
    """Faster wins; within 2%, the unquantised base, then more envs, then less memory."""
    if abs(a.env_steps_per_s - b.env_steps_per_s) > 0.02 * max(a.env_steps_per_s, b.env_steps_per_s):
        return a.env_steps_per_s > b.env_steps_per_s
    key_a = (a.settings["model.quantization"] is None, a.settings["env.n_envs"], -a.peak_gb)
    key_b = (b.settings["model.quantization"] is None, b.settings["env.n_envs"], -b.peak_gb)
    return key_a > key_b


def plan_notes(cfg: Config, plan: Plan) -> list[str]:
    """What the user should know about the chosen settings."""
    notes = []
    chosen = plan.chosen
    quant = chosen.settings["model.quantization"] if chosen is not None else None
    if quant:
        notes.append(
            f"model.quantization={quant} needs a CUDA GPU and bitsandbytes "
            "(pip install 'vlmppo[quant]'); PPO then samples from the adapter model (a quantised base cannot "
            "be merged), and checkpoints hold the adapter only (the base is named, not saved)."
        )
    if plan.gpus > 1:
        notes.append(
            f"Per GPU: each of the {plan.gpus} GPUs holds the whole model and env.n_envs / {plan.gpus} envs "
            "(data parallel). `vlmppo ppo` runs one process today; SFT runs data parallel with sft.launch=ddp."
        )
    notes.append(
        "env-steps/s: a model fitted to H200 figures (bench/RESULTS.md) at full-length answers; read it as a "
        "ranking of settings: smaller cards are slower, and trained policies answer in fewer tokens."
    )
    return notes
