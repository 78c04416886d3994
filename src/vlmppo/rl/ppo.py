"""The PPO loop (RL4VLM): sample thoughts + action for all envs at once, GAE, clipped updates.

Reads top to bottom in phases: 1. collect a rollout (rl/rollout.py), 2. advantages, 3. PPO epochs
(rl/update.py), 4. log, 5. checkpoint. A checkpoint holds everything the loop needs to continue exactly:
the adapter, the value head, the optimizer and scheduler, every RNG stream, the vector env (pickled mid-
episode), the current observations and the counters — so ``--resume`` continues the same run, and 4
updates straight equal 2 updates + resume + 2 (tested).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vlmppo.config import Config, config_to_yaml, run_dir
from vlmppo.config.plan import ppo_counts
from vlmppo.errors import CheckpointError, ConfigError, LaunchError
from vlmppo.locks import locked
from vlmppo.rl.gae import compute_gae, normalize_advantages
from vlmppo.rl.losses import explained_variance
from vlmppo.rl.policy import REFERENCE_ADAPTER, ActorCritic, ValueHead, hidden_size
from vlmppo.rl.rollout import Rollout, Step, answer_offsets, collect_rollout, rollout_step, state_values
from vlmppo.rl.update import BadMinibatchGuard, UpdateTargets, collate, ppo_epochs

__all__ = [
    "PpoResult",
    "Step",
    "answer_offsets",
    "build_policy",
    "collate",
    "find_resume_checkpoint",
    "rollout_step",
    "state_values",
    "train_ppo",
]

SAMPLES_PER_LOG = 8  # sample answers written every ppo.log_samples_every updates
INIT_CHOICES = "null (start from model.path), sft, ppo, last or a checkpoint folder"


@dataclass
class PpoResult:
    out_dir: Path
    updates: int
    env_steps: int
    last_metrics: dict
    stopped_by: str | None = None  # the signal that stopped the run early, if any
    checkpoint: Path | None = None
    resume_changes: list[str] = field(default_factory=list)  # settings changed since the resumed checkpoint


def _check_lora_layout(path: Path, cfg: Config) -> None:
    """A resumed adapter must have the layout the config asks for (else the run silently changes)."""
    adapter = json.loads((path / "adapter_config.json").read_text())
    want = cfg.model.lora
    if want is None:
        raise CheckpointError(
            f"{path} is a LoRA adapter, but model.lora is null (full fine-tuning).",
            hint="Resume with the LoRA settings the run started with.",
        )
    if (adapter.get("r"), adapter.get("lora_alpha")) != (want.r, want.alpha):
        raise CheckpointError(
            f"{path} has LoRA r={adapter.get('r')} alpha={adapter.get('lora_alpha')}, but the config asks for "
            f"model.lora.r={want.r} alpha={want.alpha}.",
            hint="Resume with the LoRA settings the run started with, or start a new run (another run.name).",
        )


def build_policy(cfg: Config, device: str, resume_from: Path | None = None, accelerator=None) -> ActorCritic:
    """The actor-critic: base model + LoRA (fresh, from ``ppo.init_from``, or from a checkpoint being
    resumed) + value head (fresh, or the checkpoint's when resuming). With an ``accelerator``, its
    autocast (bf16 mixed precision) wraps the model's forward passes."""
    from vlmppo.checkpoints import base_model_for, check_family, resolve_checkpoint
    from vlmppo.models import load_model

    source = resume_from
    if source is None and cfg.ppo.init_from:
        source = resolve_checkpoint(
            run_dir(cfg), cfg.ppo.init_from, key="ppo.init_from", choices=INIT_CHOICES
        )
    if source is None:
        loaded = load_model(cfg.model, device=device, for_training=True)
    elif (source / "adapter_config.json").is_file():
        from peft import PeftModel

        meta = check_family(source, cfg.model.family)
        if resume_from is not None:
            _check_lora_layout(source, cfg)
        base = cfg.model.model_copy(update={"path": base_model_for(source, meta, cfg.model), "lora": None})
        loaded = load_model(base, device=device, for_training=False)
        loaded.model = PeftModel.from_pretrained(loaded.model, str(source), is_trainable=True)
        if cfg.model.gradient_checkpointing:  # load_model only turns it on for a model it trains
            loaded.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:  # a full model folder: train it as configured (fully, or with a fresh LoRA on top)
        check_family(source, cfg.model.family)
        loaded = load_model(
            cfg.model.model_copy(update={"path": str(source)}), device=device, for_training=True
        )
    if cfg.ppo.kl_coef and (reference := reference_adapter(cfg, resume_from)) is not None:
        # The KL anchor: the adapter PPO started from, frozen (ActorCritic.reference_logprobs says why).
        loaded.model.load_adapter(str(reference), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    disable_dropout(loaded.model)
    head = ValueHead(hidden_size(loaded.model))
    if resume_from is not None:
        from safetensors.torch import load_file

        head.load_state_dict(load_file(str(resume_from / "value_head.safetensors")))
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    from vlmppo.models.generation import resolve_decoder

    return ActorCritic(
        loaded,
        head,
        device,
        merged_sampling=uses_merged_sampling(cfg, device),
        autocast=autocast,
        decoder=resolve_decoder(cfg.model.decoder, device),
    )


def reference_adapter(cfg: Config, resume_from: Path | None) -> Path | None:
    """The folder of the KL reference adapter: the resumed checkpoint's ``reference/`` (peft saves it with
    every checkpoint), else the ``ppo.init_from`` adapter; None when PPO started from a fresh LoRA (or a
    full model folder), whose reference is the model with the adapter disabled."""
    from vlmppo.checkpoints import resolve_checkpoint

    if resume_from is not None and (resume_from / REFERENCE_ADAPTER / "adapter_config.json").is_file():
        return resume_from / REFERENCE_ADAPTER
    if cfg.ppo.init_from:
        start = resolve_checkpoint(run_dir(cfg), cfg.ppo.init_from)
        if (start / "adapter_config.json").is_file():
            return start
    return None


def disable_dropout(model) -> None:
    """PPO trains without dropout (as TRL does): the update's first forward then scores exactly what the
    rollout scored, so the ratio starts at 1 and clipping measures the policy's change, not dropout noise.
    Train mode stays on for the update (gradient checkpointing only runs in train mode)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def uses_merged_sampling(cfg: Config, device: str) -> bool:
    """``ppo.merged_sampling``: auto means on a GPU (where decoding is launch-bound), off on the CPU."""
    mode = cfg.ppo.merged_sampling
    return cfg.model.lora is not None and (mode is True or (mode == "auto" and device.startswith("cuda")))


# Settings the checkpoint fixes: the vector env is pickled mid-episode (its count, task, time limit and
# rendering) and the rollout tensors are laid out [n_steps, n_envs] for it.
FIXED_ON_RESUME = (
    "env.id",
    "env.n_envs",
    "env.kwargs",
    "env.max_episode_steps",
    "env.observation",
    "env.tile_size",
)


def check_resume_config(checkpoint: Path, cfg: Config) -> list[str]:
    """The ``env``/``model``/``ppo`` settings changed since ``checkpoint`` was saved (``key: old -> new``), for
    the resumed run to report; CheckpointError when one of them is fixed by the checkpoint."""
    from vlmppo.sft.checkpointing import config_changes

    changes = config_changes(checkpoint, cfg, sections=("env", "model", "ppo"))
    fixed = [c for c in changes if c.split(":")[0].startswith(FIXED_ON_RESUME)]
    if fixed:
        others = [c for c in changes if c not in fixed]
        raise CheckpointError(
            f"Cannot resume {checkpoint} with {'; '.join(fixed)}: the checkpoint holds that run's vector env "
            "(pickled mid-episode) and its rollouts are shaped for it."
            + (f" Also changed: {'; '.join(others)}." if others else ""),
            hint="Resume with the env settings the run started with, or start a new run (another run.name).",
        )
    return changes


def check_single_process(accelerator=None) -> None:
    """LaunchError when started as several processes (torchrun / ``accelerate launch``: ``WORLD_SIZE`` > 1):
    PPO has no data-parallel rollouts or updates yet, so each process would run its own copy of the run
    and all would write the same run folder."""
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if accelerator is not None:
        world = max(world, accelerator.num_processes)
    if world > 1:
        raise LaunchError(
            f"`vlmppo ppo` runs as one process (multi-GPU PPO is not built yet), but it was launched as {world} "
            "processes, which would each run the whole run into the same folder.",
            hint="Start it without a launcher (`vlmppo ppo ...`: one GPU or the CPU); for SLURM, render the "
            "job with slurm.nodes=1 slurm.gpus_per_node=1.",
        )


def find_resume_checkpoint(cfg: Config, resume: str | None, notes: list[str] | None = None) -> Path | None:
    """``--resume auto``: the newest whole PPO checkpoint of this run, or None (start fresh), with a line in
    ``notes`` per newer one skipped as damaged; ``--resume PATH``: that checkpoint, which must be whole."""
    from vlmppo.checkpoints import resolve_checkpoint, resume_auto

    if not resume:
        return None
    if resume != "auto":
        return resolve_checkpoint(run_dir(cfg), resume, key="--resume", hashes=True)
    path, skipped = resume_auto(run_dir(cfg) / "ppo" / "checkpoints", "ppo")
    if notes is not None:
        notes.extend(skipped)
    return path


def make_optimizer(policy: ActorCritic, cfg: Config) -> torch.optim.Optimizer:
    p = cfg.ppo
    lora = [q for q in policy.loaded.model.parameters() if q.requires_grad]
    groups = [{"params": lora, "lr": p.lr}, {"params": list(policy.value_head.parameters()), "lr": p.lr}]
    if p.value_head_lr is not None:
        groups[1]["lr"] = p.value_head_lr
    return torch.optim.AdamW(groups, lr=p.lr, eps=p.adam_eps, weight_decay=p.weight_decay)


def advantages_and_targets(rollout: Rollout, cfg: Config) -> UpdateTargets:
    """Phase 2: GAE (bootstrapping through truncation, not termination), advantages normalised."""
    p = cfg.ppo
    values = rollout.values
    adv, returns = compute_gae(
        rollout.rewards,
        values,
        rollout.terminated,
        rollout.truncated,
        rollout.next_values,
        rollout.last_value,
        p.gamma,
        p.gae_lambda,
    )
    old_logp = torch.tensor([s.old_logp for s in rollout.flat])
    return UpdateTargets(
        old_logp, values.reshape(-1), normalize_advantages(adv.reshape(-1)), returns.reshape(-1)
    )


def check_finite_rollout(rollout: Rollout, targets: UpdateTargets, last_checkpoint: Path | None) -> None:
    from vlmppo.rl.update import TrainingDiverged

    if not (torch.isfinite(targets.old_logp).all() and torch.isfinite(targets.old_values).all()):
        raise TrainingDiverged(
            "PPO diverged: the rollout's log-probs or values are NaN/inf, so the model itself is broken; "
            f"no checkpoint was written from it (last good one: {last_checkpoint or 'none'}).",
            hint="Resume from the last good checkpoint with a lower ppo.lr or model.dtype=float32.",
        )


def rollout_metrics(rollout: Rollout, recent_episodes: deque, cfg: Config) -> dict:
    flat = rollout.flat
    n = len(flat)
    episodes = list(recent_episodes)
    return {
        "rollout/ep_return_mean": float(np.mean([e["return"] for e in episodes])) if episodes else None,
        "rollout/ep_length_mean": float(np.mean([e["length"] for e in episodes])) if episodes else None,
        # success: RL4VLM's (return > 0), the one to compare with the paper; solved: the task's own goal.
        "rollout/success_rate": float(np.mean([e["success"] for e in episodes])) if episodes else None,
        "rollout/solved_rate": float(np.mean([e["solved"] for e in episodes])) if episodes else None,
        "rollout/episodes": len(rollout.episodes),
        "rollout/invalid_action_rate": sum(s.invalid for s in flat) / n,
        "rollout/reward_mean": float(rollout.rewards.mean()),
        "rollout/answer_tokens_mean": rollout.answer_tokens / n,
        # An answer that runs to max_new_tokens without end-of-turn: RL can teach a model to ramble on.
        "rollout/ended_with_eos_rate": sum(s.ended_with_eos for s in flat) / n,
        "rollout/value_mean": float(rollout.values.mean()),
        "time/rollout_s": rollout.seconds,
        "time/env_steps_per_s": n / max(rollout.seconds, 1e-9),
        "time/gen_tokens_per_s": rollout.answer_tokens / max(rollout.seconds, 1e-9),
    }


def sample_rows(rollout: Rollout, update: int, adapter) -> list[dict]:
    """A few answers of this rollout, for people to read what the agent thinks."""
    rows = []
    for t, row in enumerate(rollout.steps):
        for env, step in enumerate(row):
            if len(rows) >= SAMPLES_PER_LOG:
                return rows
            action = adapter.legal_actions[step.action] if step.action is not None else None
            rows.append(
                {
                    "update": update,
                    "t": t,
                    "env": env,
                    "text": step.text,
                    "action": action,
                    "invalid": step.invalid,
                    "reward": step.reward,
                    "value": step.value,
                }
            )
    return rows


@locked("ppo")
def train_ppo(cfg: Config, *, on_update=None, resume: str | None = None) -> PpoResult:
    """Run PPO as configured; metrics every update in ``runs/<name>/ppo/metrics.jsonl``, checkpoints
    every ``ppo.save_every`` updates, at the end, and on SIGTERM/SIGUSR1 (then it returns early with
    ``stopped_by`` set). ``resume``: None, ``auto`` or a checkpoint path."""
    from vlmppo.checkpoints import latest_checkpoint, protected_checkpoints, save_checkpoint
    from vlmppo.envs import make_vec_env_from_config
    from vlmppo.io import JsonlWriter, truncate_jsonl
    from vlmppo.rl.schedule import make_cosine_scheduler
    from vlmppo.signals import stop_handlers
    from vlmppo.sysinfo import resolve_device
    from vlmppo.tracking import Tracker
    from vlmppo.train_state import load_trainer_state, restore_rng, save_trainer_state

    check_single_process()
    p, counts = cfg.ppo, ppo_counts(cfg)
    if p.kl_coef and cfg.model.lora is None:
        raise ConfigError(
            "ppo.kl_coef > 0 needs a LoRA model: the KL reference is the starting adapter (or the model with "
            "the adapter disabled), and full fine-tuning keeps no frozen copy of the starting model.",
            hint="Set model.lora (e.g. model.lora.r=64) or ppo.kl_coef=0.",
        )
    from vlmppo.accel import make_accelerator, precision_for

    device = resolve_device(cfg)
    # Single process for now (one GPU or the CPU; check_single_process); the Accelerator gives bf16 autocast
    # on a GPU, and its backward/clipping are what a launched multi-process run will need.
    accelerator = make_accelerator(device, precision_for(p.mixed_precision, device))
    check_single_process(accelerator)
    out = run_dir(cfg) / "ppo"
    out.mkdir(parents=True, exist_ok=True)
    resume_from = find_resume_checkpoint(cfg, resume)
    if resume_from is None and latest_checkpoint(out / "checkpoints") is not None:
        raise CheckpointError(
            f"{out / 'checkpoints'} already has checkpoints of a PPO run; a fresh run would mix with them.",
            hint="Continue it with --resume auto, or start a new run with another run.name (or delete the folder).",
        )
    changes = check_resume_config(resume_from, cfg) if resume_from is not None else []
    torch.manual_seed(cfg.run.seed)
    policy = build_policy(cfg, device, resume_from, accelerator)
    optimizer = make_optimizer(policy, cfg)
    # The value head's group keeps its ratio to the policy LR as both follow the cosine.
    scheduler = make_cosine_scheduler(optimizer, counts["updates"], p.lr, p.min_lr, proportional_groups=True)
    rng = np.random.default_rng(cfg.run.seed)
    recent_episodes: deque = deque(maxlen=max(cfg.env.n_envs, 10))
    start, env_steps, guard = 1, 0, BadMinibatchGuard(p.max_bad_minibatches)
    if resume_from is not None:
        state = load_trainer_state(resume_from, stage="ppo")
        truncate_jsonl(out / "samples.jsonl", "update", state["update"])  # what followed it is redone
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["loop_rng"]
        vec = pickle.loads(state["vec_env"])
        obs, infos = state["obs"], state["infos"]
        recent_episodes.extend(state["recent_episodes"])
        start, env_steps = state["update"] + 1, state["env_steps"]
        restore_rng(state["rng"])
    else:
        (out / "samples.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log
        vec = make_vec_env_from_config(cfg.env, cfg.env.n_envs, cfg.run.seed)
        obs, infos = vec.reset()
    if torch.cuda.is_available() and device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    metrics: dict = {}
    last_saved: Path | None = resume_from
    saved_update = start - 1

    def checkpoint(update: int) -> Path:
        def write(folder: Path) -> None:
            from safetensors.torch import save_file

            policy.loaded.model.save_pretrained(folder)
            policy.loaded.processor.save_pretrained(folder)
            save_file(policy.value_head.state_dict(), str(folder / "value_head.safetensors"))
            (folder / "config.yaml").write_text(config_to_yaml(cfg))
            save_trainer_state(
                folder,
                {
                    "stage": "ppo",
                    "update": update,
                    "env_steps": env_steps,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "loop_rng": rng.bit_generator.state,
                    "vec_env": pickle.dumps(vec),
                    "obs": obs,
                    "infos": infos,
                    "recent_episodes": list(recent_episodes),
                },
            )

        meta = {
            "stage": "ppo",
            "family": cfg.model.family,
            "base_model": str(policy.loaded.path),
            "update": update,
            "env_steps": env_steps,
            "metrics": json.loads(json.dumps(metrics, default=str)),
            **tracker.checkpoint_meta(),  # the W&B run a resume continues
        }
        keep = {"keep_last": p.keep_last, "protect": protected_checkpoints(cfg)}
        return save_checkpoint(out / "checkpoints", update, meta, write, **keep)

    stopped_by = None
    with (
        Tracker(
            out,
            cfg.tracking,
            step_key="update",
            run_name=cfg.run.name,
            resume_step=saved_update,
            x_key="env_steps",
            config=cfg.model_dump(mode="json"),
            resume_from=resume_from,
            hparam_metrics=("rollout/success_rate", "rollout/ep_return_mean"),
        ) as tracker,
        JsonlWriter(out / "samples.jsonl") as samples,
        stop_handlers() as stop,
    ):
        for update in range(start, counts["updates"] + 1):
            rollout, obs, infos = collect_rollout(policy, vec, obs, infos, cfg)  # 1. rollout
            env_steps += rollout.rewards.numel()
            recent_episodes.extend(rollout.episodes)
            targets = advantages_and_targets(rollout, cfg)  # 2. advantages
            check_finite_rollout(rollout, targets, last_saved)
            t_update = time.time()
            train_stats = ppo_epochs(
                policy, optimizer, rollout.flat, targets, cfg, rng, guard, accelerator
            )  # 3. epochs
            policy.weights_changed()
            scheduler.step()
            metrics = {  # 4. log
                "update": update,
                "env_steps": env_steps,
                **rollout_metrics(rollout, recent_episodes, cfg),
                **train_stats,
                "train/explained_variance": explained_variance(targets.old_values, targets.returns),
                "train/lr": optimizer.param_groups[0]["lr"],
                "train/lr_value_head": optimizer.param_groups[1]["lr"],
                "time/update_s": time.time() - t_update,
            }
            if torch.cuda.is_available() and device.startswith("cuda"):
                metrics["sys/gpu_mem_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
            tracker.log(metrics)
            if update % p.log_samples_every == 0 or update == start:
                rows = sample_rows(rollout, update, vec.adapter)
                samples.write_many(rows)
                tracker.log_samples(rows, env_steps)
            if on_update:
                on_update(update, counts["updates"], metrics)
            if update % p.save_every == 0 or update == counts["updates"] or stop.requested:  # 5. checkpoint
                last_saved, saved_update = checkpoint(update), update
            if stop.requested:
                stopped_by = stop.signal_name
                break
    return PpoResult(out, saved_update, env_steps, metrics, stopped_by, last_saved, changes)
