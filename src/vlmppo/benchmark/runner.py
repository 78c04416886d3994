"""``run_bench``: rollout and update throughput and peak memory of the PPO loop, for one preset.

The order matters for honest figures: every measurement runs in the same process on the same loaded
model, the batch-1 sequential baseline first, so that it is always reported beside the batched runs of
the same machine.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

from vlmppo.benchmark.options import check_repeats, check_shape_device
from vlmppo.benchmark.rollout import RolloutRow, measure_rollout
from vlmppo.benchmark.update import UpdateRow, measure_update
from vlmppo.errors import ConfigError


@dataclass
class BenchResult:
    """What ``vlmppo bench`` measured; ``to_dict`` is what the JSON file holds."""

    meta: dict
    rollout: list[RolloutRow] = field(default_factory=list)
    update: UpdateRow | None = None

    @property
    def baseline(self) -> RolloutRow:
        return next(r for r in self.rollout if r.n_envs == 1)

    def to_dict(self) -> dict:
        def row(r):
            out = asdict(r)
            names = ("env_steps_per_s", "gen_tokens_per_s", "ms_per_position")
            out.update({k: getattr(r, k) for k in names if hasattr(r, k)})
            if isinstance(r, UpdateRow):
                out.update(samples_per_s=r.samples_per_s, tokens_per_s=r.tokens_per_s)
            return out

        return {
            "meta": self.meta,
            "rollout": [
                {**row(r), "speedup_vs_batch1": r.env_steps_per_s / self.baseline.env_steps_per_s}
                for r in self.rollout
            ],
            "update": row(self.update) if self.update else None,
        }


def bench_config(cfg, shape: str | None, device: str):
    """The preset's config with the model to benchmark swapped in (and no checkpoint to start from).

    ``shape`` None keeps ``model.path`` (a real checkpoint); ``tiny`` is the family's tiny random model;
    a registered shape is built (random weights) and cached on first use.
    """
    from vlmppo.models.shapes import get_shape, shape_model_path

    model = cfg.model
    if shape == "tiny":
        model = model.model_copy(update={"path": f"tiny:{model.family}"})
    elif shape is not None:
        spec = get_shape(shape)
        check_shape_device(shape, device)
        path = shape_model_path(spec, device=device)
        model = model.model_copy(update={"path": str(path), "family": spec.family})
    # init_from names an SFT checkpoint of a real run; the benchmark starts from fresh LoRA weights.
    return cfg.model_copy(update={"model": model, "ppo": cfg.ppo.model_copy(update={"init_from": None})})


class AnswerLengths:
    """The answer lengths ``ActorCritic.sample`` forces in a benchmark (``forced_lengths``).

    Random weights never end an answer by themselves, which would make tokens/s and env-steps/s
    incomparable between runs. ``span`` None: every answer exactly ``max_new_tokens`` long; ``(low, high)``:
    each answer ends with its end-of-turn token after a length drawn uniformly in that range, from a
    fixed-seed generator, as trained policies do (their answers take 30-80 tokens).
    """

    def __init__(self, max_new_tokens: int, span: tuple[int, int] | None, seed: int):
        import numpy as np

        self.max_new_tokens, self.span = max_new_tokens, span
        self.rng = np.random.default_rng(seed)

    def __call__(self, rows: int):
        import torch

        if self.span is None:
            return torch.full((rows,), self.max_new_tokens, dtype=torch.long)
        low, high = self.span[0], min(self.span[1], self.max_new_tokens)
        return torch.as_tensor(self.rng.integers(low, high + 1, size=rows), dtype=torch.long)


def _meta(cfg, shape, device, policy, n_envs, repeats, decoders, answer_lengths) -> dict:
    import torch

    from vlmppo.accel import precision_for
    from vlmppo.sysinfo import git_sha, package_versions

    model = policy.loaded.model
    meta = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch_cuda": torch.version.cuda,
        "versions": {k: v for k, v in package_versions().items() if v != "not installed"},
        "git_sha": git_sha(),
        "env": cfg.env.id,
        "shape": shape or "preset",
        "model_path": str(policy.loaded.path),
        "family": cfg.model.family,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "mixed_precision": precision_for(cfg.ppo.mixed_precision, device),
        "attn_implementation": cfg.model.attn_implementation,
        "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "lora_r": cfg.model.lora.r if cfg.model.lora else None,
        "max_new_tokens": cfg.ppo.max_new_tokens,
        "answer_lengths": "forced" if answer_lengths is None else "-".join(map(str, answer_lengths)),
        "decoders": decoders,
        "temperature": cfg.ppo.temperature,
        "n_envs": n_envs,
        "repeats": repeats,
    }
    if device == "cuda":
        meta["weights_gib"] = torch.cuda.memory_allocated() / 2**30
    return meta


def bench_policy(cfg, shape: str | None, device: str):
    """``(cfg, policy)``: ``cfg`` for the benchmark shape (``bench_config``) and its ``ActorCritic`` under the
    same Accelerator as the PPO loop (its bf16 autocast, or its absence), torch seeded with ``run.seed``."""
    import torch

    from vlmppo.accel import make_accelerator, precision_for
    from vlmppo.rl.startup import build_policy

    cfg = bench_config(cfg, shape, device)
    torch.manual_seed(cfg.run.seed)
    accelerator = make_accelerator(device, precision_for(cfg.ppo.mixed_precision, device))
    return cfg, build_policy(cfg, device, accelerator=accelerator)


def script_policy(
    preset: str,
    shape: str | None,
    *,
    max_new_tokens: int,
    device: str | None = None,
    decoder: str | None = "static",
    answer_lengths: tuple[int, int] | None = None,
):
    """``(cfg, policy, device)`` for a one-process measurement script in ``bench/``: ``preset`` with answers of at
    most ``max_new_tokens`` on ``device`` (None: the preset's), its policy from ``bench_policy``, decoding with
    ``decoder`` (None: the config's) and answers forced as ``AnswerLengths`` forces them."""
    from vlmppo.config import load_config
    from vlmppo.sysinfo import resolve_device

    overrides = [f"ppo.max_new_tokens={max_new_tokens}"] + ([f"run.device={device}"] if device else [])
    cfg = load_config(preset, None, overrides)
    device = resolve_device(cfg)
    cfg, policy = bench_policy(cfg, shape, device)
    policy.decoder = decoder or policy.decoder
    policy.forced_lengths = AnswerLengths(cfg.ppo.max_new_tokens, answer_lengths, cfg.run.seed)
    return cfg, policy, device


def run_bench(
    cfg,
    *,
    shape: str | None,
    n_envs: list[int],
    repeats: int,
    decoders: list[str] | None = None,
    answer_lengths: tuple[int, int] | None = None,
    on_phase=None,
) -> BenchResult:
    """Measure rollout (batch-1 sequential and batched) and update throughput for `cfg`'s env and model.

    Answer lengths are forced (``AnswerLengths``): every answer ``ppo.max_new_tokens`` tokens, or drawn
    in ``answer_lengths``. The batch-1 sequential baseline always decodes with transformers' ``generate``
    (RL4VLM's loop); the batched rows are measured once per decoder in ``decoders`` (default: the
    config's ``model.decoder``).

    Args:
        cfg: The resolved config (``run.device`` decides the device).
        shape: None (the preset's model), ``"tiny"`` or a name in ``models.shapes.SHAPES``.
        n_envs: Env counts to measure; 1 is the batch-1 sequential baseline.
        repeats: Timed rollout steps per env count, and timed passes over the recorded steps in the update.
        decoders: ``generate`` and/or ``static``.
        answer_lengths: None (forced to ``ppo.max_new_tokens``) or a (low, high) range.
        on_phase: Called with a short description before each phase (progress output).
    """
    import torch

    from vlmppo.models.generation import resolve_decoder
    from vlmppo.sysinfo import resolve_device

    check_repeats(repeats)
    say = on_phase or (lambda text: None)
    device = resolve_device(cfg)
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device=cuda but no CUDA GPU is visible.", hint="Use run.device=cpu.")
    say(f"model: {shape or cfg.model.path}")
    cfg, policy = bench_policy(cfg, shape, device)
    policy.forced_lengths = AnswerLengths(cfg.ppo.max_new_tokens, answer_lengths, cfg.run.seed)
    decoders = decoders or [resolve_decoder(cfg.model.decoder, device)]
    meta = _meta(cfg, shape, device, policy, n_envs, repeats, decoders, answer_lengths)
    result = BenchResult(meta=meta)
    recorded: list = []
    runs = [("generate", 1)] + [(d, n) for d in decoders for n in n_envs if n > 1]
    for decoder, n in runs:
        say(f"rollout: {'batch-1 sequential' if n == 1 else f'batched, {n} envs'} ({decoder})")
        policy.decoder = decoder
        keep = recorded if (decoder, n) == runs[-1] else None
        row = measure_rollout(policy, cfg, n, repeats=repeats, keep=keep, gpu_name=meta["gpu"])
        result.rollout.append(row)
    say(f"update: {len(recorded)} recorded steps, {repeats} passes")
    result.update = measure_update(policy, cfg, recorded, repeats=repeats)
    return result
