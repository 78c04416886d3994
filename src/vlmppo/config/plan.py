"""Derived numbers of a stage, computed from the config and printed by ``--dry-run``.

These are never stored as config: change n_envs and the number of updates follows.
"""

from __future__ import annotations

import math

from vlmppo.config.loader import run_dir
from vlmppo.config.schema import Config
from vlmppo.errors import ConfigError
from vlmppo.registry import STAGES


def ppo_counts(cfg: Config, world: int = 1) -> dict[str, int]:
    """Rollout size, number of updates and optimizer steps of a PPO run over ``world`` data-parallel ranks.

    ``env.n_envs``, ``ppo.minibatch_size`` and ``ppo.micro_batch_size`` are per rank (each rank its own envs
    and minibatches, whose gradients are averaged); ``ppo.total_env_steps`` counts every rank's steps, so
    more ranks make fewer, larger updates.
    """
    p = cfg.ppo
    rollout = cfg.env.n_envs * p.n_steps
    updates = max(1, math.ceil(p.total_env_steps / (rollout * world)))
    minibatches = rollout // p.minibatch_size
    return {
        "rollout_size": rollout,
        "global_rollout_size": rollout * world,
        "updates": updates,
        "env_steps_run": updates * rollout * world,
        "minibatches_per_epoch": minibatches,
        "optimizer_steps_per_update": minibatches * p.n_epochs,
        "micro_steps_per_optimizer_step": p.minibatch_size // p.micro_batch_size,
        "dropped_per_epoch": rollout - minibatches * p.minibatch_size,
    }


def _history(turns: int) -> str:
    return f", history: the last {turns} turn(s) with their frames" if turns else ""


def _common(cfg: Config) -> list[tuple[str, str]]:
    lora = cfg.model.lora
    training = f"LoRA r={lora.r} alpha={lora.alpha}" if lora else "full fine-tuning"
    if cfg.model.quantization:
        training = f"{cfg.model.quantization} base (QLoRA), " + training
    return [
        ("run directory", str(run_dir(cfg))),
        ("device", cfg.run.device),
        ("env", f"{cfg.env.id} x {cfg.env.n_envs} (prompt: {cfg.env.prompt}{_history(cfg.env.history)})"),
        ("model", f"{cfg.model.path} ({cfg.model.family}, dtype {cfg.model.dtype}, {training})"),
    ]


def rank_rows(cfg: Config, world: int) -> list[tuple[str, str]]:
    """The data-parallel plan of a PPO run over ``world`` ranks: the launch, then one row per rank (the first
    8): its envs' seeds, env steps and optimizer steps per update."""
    if world <= 1:
        return []
    c, p, n = ppo_counts(cfg, world), cfg.ppo, cfg.env.n_envs
    rows = [
        (
            "launch",
            f"{p.launch if p.launch != 'single' else 'ddp'} over {world} processes (one per GPU; without GPUs "
            "CPU processes on gloo); gradients averaged over ranks: "
            f"{world * p.minibatch_size} samples per optimizer step",
        )
    ]
    for rank in range(min(world, 8)):
        first = cfg.run.seed + rank * n  # rl.distributed.env_seed
        rows.append(
            (
                f"rank {rank}",
                f"{n} envs (seeds {first}-{first + n - 1}), {c['rollout_size']} env steps and "
                f"{c['optimizer_steps_per_update']} optimizer steps per update",
            )
        )
    if world > 8:
        rows.append((f"ranks 8-{world - 1}", "likewise, seeds following on"))
    return rows


def quantized_sampling_rows(cfg: Config) -> list[tuple[str, str]]:
    """PPO's "sampling" row for a quantised base (none otherwise)."""
    if not cfg.model.quantization:
        return []
    return [
        (
            "sampling",
            f"from the adapter model (unmerged): a {cfg.model.quantization} base has no weights to merge the "
            "adapter into; scoring and the update also run on the quantised base",
        )
    ]


def stage_plan(
    cfg: Config, stage: str, *, gpu_memory: str | None = None, world: int = 1
) -> list[tuple[str, str]]:
    """(what, value) rows of ``stage``'s plan.

    Args:
        world: Processes of a data-parallel run (``--gpus``): PPO's per-rank plan.
        gpu_memory: PPO's and SFT's "est. GPU memory" row. The estimate builds the model on the meta device, so the
            command layer computes it (``vlmppo.memory``) and hands it in: the config layer stays below
            models and envs.
    """
    rows = _common(cfg)
    if stage == "ppo":
        c = ppo_counts(cfg, world)
        p = cfg.ppo
        ranks = f" x {world} ranks = {c['global_rollout_size']}" if world > 1 else ""
        rows += [
            ("starts from", p.init_from or "the base model (fresh LoRA)"),
            (
                "rollout",
                f"{cfg.env.n_envs} envs x {p.n_steps} steps = {c['rollout_size']}{ranks} samples per update",
            ),
            ("updates", f"{c['updates']} ({c['env_steps_run']} env steps; asked {p.total_env_steps})"),
            (
                "optimizer steps / update",
                f"{c['optimizer_steps_per_update']} ({p.n_epochs} epochs x {c['minibatches_per_epoch']} minibatches"
                f" of {p.minibatch_size}; {c['micro_steps_per_optimizer_step']} micro-batches of {p.micro_batch_size})",
            ),
            ("learning rate", f"{p.lr:g} -> {p.min_lr:g} cosine over {c['updates']} updates"),
            ("advantages", advantage_plan(cfg)),
            (
                "log pi(a|s)",
                f'{p.thought_coef:g} x thought tokens + {p.action_key_coef:g} x "action": key tokens + action '
                f"tokens; plain sampling at temperature {p.temperature:g}",
            ),
            (
                "checkpoints",
                f"every {p.save_every} updates and at the end, in {run_dir(cfg) / 'ppo/checkpoints'}",
            ),
        ]
        if p.eval_every:
            episodes = p.eval_episodes * len(cfg.eval.seeds)
            rows.append(("greedy evals", f"{episodes} episodes (eval.seeds) before update 1, every {p.eval_every} "
                         "updates and after the last"))  # fmt: skip
        rows += quantized_sampling_rows(cfg)
        if p.kl_coef:
            anchor = (
                f"the starting policy ({p.init_from})" if p.init_from else "the base model (adapter disabled)"
            )
            rows.append(("KL penalty", f"{p.kl_coef:g} x KL to {anchor}"))
        rows += rank_rows(cfg, world)
        if gpu_memory is not None:
            rows.append(("est. GPU memory", gpu_memory))
        if c["dropped_per_epoch"]:
            rows.append(("note", f"{c['dropped_per_epoch']} samples per epoch do not fill a minibatch"))
    elif stage == "sft":
        s = cfg.sft
        length = f"{s.max_steps} optimizer steps" if s.max_steps else f"{s.epochs:g} epochs"
        rows += [
            ("train file", s.train_file or str(run_dir(cfg) / "data/train.jsonl")),
            ("length", length),
            ("batch", f"{s.batch_size} per device x {s.grad_accum} accumulation"),
            ("learning rate", f"{s.lr:g}, {s.lr_schedule}, warm-up {s.warmup_ratio:.0%}"),
            ("launch", s.launch + (f" over {world} processes" if world > 1 else "")),
        ]
        if gpu_memory is not None:
            rows.append(("est. GPU memory", gpu_memory))
    elif stage == "collect":
        c = cfg.collect
        rows += [("policy", c.policy + (f" ({c.ckpt})" if c.ckpt else "")), ("episodes", str(c.episodes))]
        if c.epsilon:
            rows.append(("epsilon", f"{c.epsilon:g} (random action probability)"))
    elif stage == "label":
        rows += [("labeller", cfg.label.labeller), ("mode", cfg.label.mode)]
    elif stage == "eval":
        e = cfg.eval
        rows += [
            ("checkpoint", e.ckpt or "last"),
            ("episodes", f"{e.episodes} per seed x seeds {e.seeds} = {e.episodes * len(e.seeds)}"),
            (
                "decoding",
                "the checkpoint's generation_config.json"
                if e.generation == "checkpoint"
                else "greedy"
                if e.greedy
                else f"sampled at {e.temperature:g}",
            ),
        ]
    return rows


def stage_range(start: str | None, stop: str | None, *, error: type[Exception] = ConfigError) -> list[str]:
    """The stages from ``start`` to ``stop`` (both included), in pipeline order (``--from``/``--to``).

    Raises:
        ``error`` (ConfigError; SlurmError for `vlmppo slurm`): an unknown stage, or --from after --to.
    """
    for name, value in (("--from", start), ("--to", stop)):
        if value is not None and value not in STAGES:
            raise error(f"{name} {value!r} is not a stage.", hint=f"Stages, in order: {', '.join(STAGES)}.")
    first = STAGES.index(start) if start else 0
    last = STAGES.index(stop) if stop else len(STAGES) - 1
    if first > last:
        raise error(f"--from {start} comes after --to {stop}.", hint=f"Stage order: {' -> '.join(STAGES)}.")
    return list(STAGES[first : last + 1])


def advantage_plan(cfg: Config) -> str:
    """The ``advantages`` row: GAE with its value head, or the groups of the critic-free estimators."""
    p = cfg.ppo
    if p.advantage == "gae":
        text = f"GAE (gamma {p.gamma:g}, lambda {p.gae_lambda:g}) with a value head"
        if p.value_detach:
            text += " on detached features (its loss trains the head only)"
        if p.value_warmup_updates:
            text += f"; updates 1-{p.value_warmup_updates} train the value head alone"
        return text
    norm = "/ std" if p.group_norm == "std" else "mean only"
    text = f"{p.advantage.upper()}, no value head: {cfg.env.n_envs // p.group_size} groups of {p.group_size} ({norm})"
    if p.advantage == "gigpo":
        text += f" + {p.step_weight:g} x step level (gamma {p.gamma:g})"
    return text
