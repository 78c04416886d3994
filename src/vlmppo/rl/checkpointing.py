"""PPO checkpoints: how a resume finds and checks one, what a checkpoint holds, and restoring a run from it.

A checkpoint (``ppo/checkpoints/NNNNNN/``) holds everything the loop needs to continue exactly: the adapter
(with the frozen KL ``reference/`` adapter when there is one), the value head, the processor,
``config.yaml``, and ``trainer_state.pt``: the optimizer and scheduler, every RNG stream, the vector env
(pickled mid-episode), the current observations, each env's window of earlier turns (``env.history``), the
recent episodes and the counters. So ``--resume``
continues the same run, and 4 updates straight equal 2 updates + resume + 2 (tested).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

from vlmppo.config import Config, config_to_yaml, run_dir
from vlmppo.errors import CheckpointError

if TYPE_CHECKING:
    from vlmppo.rl.run import PpoRun

# Settings the checkpoint fixes: the vector env is pickled mid-episode (its count, task, time limit and
# rendering) and the rollout tensors are laid out [n_steps, n_envs] for it.
FIXED_ON_RESUME = (
    "env.id",
    "env.n_envs",
    "env.kwargs",
    "env.max_episode_steps",
    "env.observation",
    "env.tile_size",
    "ppo.advantage",  # a value head or none, and grouped resets or not
    "ppo.group_size",
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


def check_resume_config(checkpoint: Path, cfg: Config) -> list[str]:
    """The ``env``/``model``/``ppo`` settings changed since ``checkpoint`` was saved (``key: old -> new``), for
    the resumed run to report; CheckpointError when one of them is fixed by the checkpoint."""
    from vlmppo.sft.checkpointing import config_changes

    changes = config_changes(checkpoint, cfg, sections=("env", "model", "ppo"))
    fixed = [change for change in changes if change.split(":")[0].startswith(FIXED_ON_RESUME)]
    if fixed:
        others = [change for change in changes if change not in fixed]
        raise CheckpointError(
            f"Cannot resume {checkpoint} with {'; '.join(fixed)}: the checkpoint holds that run's vector env "
            "(pickled mid-episode) and its rollouts are shaped for it."
            + (f" Also changed: {'; '.join(others)}." if others else ""),
            hint="Resume with the env settings the run started with, or start a new run (another run.name).",
        )
    return changes


def restore_run(run: PpoRun, checkpoint: Path) -> None:
    """Continue ``run`` from ``checkpoint`` (its weights are already loaded by ``build_policy``): optimizer,
    scheduler, minibatch RNG, envs and counters, then every global RNG stream, last."""
    from vlmppo.io import truncate_jsonl
    from vlmppo.train_state import load_trainer_state, restore_rng

    state = load_trainer_state(checkpoint, stage="ppo")
    truncate_jsonl(run.out / "samples.jsonl", "update", state["update"])  # what followed it is redone
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.rng.bit_generator.state = state["loop_rng"]
    run.vec = pickle.loads(state["vec_env"])
    run.obs, run.infos = state["obs"], state["infos"]
    run.history = restore_history(state.get("history"), run.cfg)
    run.recent_episodes.extend(state["recent_episodes"])
    run.update = run.saved_update = state["update"]
    run.env_steps = state["env_steps"]
    restore_rng(state["rng"])


def restore_history(saved: list | None, cfg: Config):
    """The windows of earlier turns a checkpoint saved, at the resumed run's ``env.history`` (a changed K
    keeps the newest turns that fit); None without history."""
    from vlmppo.rl.history import HistoryWindows

    if not cfg.env.history:
        return None
    if saved is None:  # saved without history: every env's episode goes on with an empty window
        return HistoryWindows(cfg.env.n_envs, cfg.env.history)
    return HistoryWindows.from_state(saved, cfg.env.history)


def save_run(run: PpoRun, metrics: dict, extra_meta: dict | None = None) -> Path:
    """Checkpoint ``run`` at its current update, atomically (``ppo.keep_last`` prunes); returns the folder.
    ``extra_meta`` goes into ``vlmppo.json`` too (the tracker's W&B run id)."""
    from vlmppo.checkpoints import protected_checkpoints, save_checkpoint
    from vlmppo.train_state import save_trainer_state

    cfg, policy = run.cfg, run.policy

    def write(folder: Path) -> None:
        from safetensors.torch import save_file

        policy.loaded.model.save_pretrained(folder)
        policy.loaded.processor.save_pretrained(folder)
        if policy.value_head is not None:  # GRPO/GiGPO runs have none
            save_file(policy.value_head.state_dict(), str(folder / "value_head.safetensors"))
        (folder / "config.yaml").write_text(config_to_yaml(cfg))
        save_trainer_state(
            folder,
            {
                "stage": "ppo",
                "update": run.update,
                "env_steps": run.env_steps,
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "loop_rng": run.rng.bit_generator.state,
                "vec_env": pickle.dumps(run.vec),
                "obs": run.obs,
                "infos": run.infos,
                "history": run.history.state() if run.history is not None else None,
                "recent_episodes": list(run.recent_episodes),
            },
        )

    meta = {
        "stage": "ppo",
        "family": cfg.model.family,
        "base_model": str(policy.loaded.path),
        "update": run.update,
        "env_steps": run.env_steps,
        "metrics": json.loads(json.dumps(metrics, default=str)),
        **(extra_meta or {}),
    }
    keep = {"keep_last": cfg.ppo.keep_last, "protect": protected_checkpoints(cfg)}
    run.checkpoint = save_checkpoint(run.out / "checkpoints", run.update, meta, write, **keep)
    run.saved_update = run.update
    return run.checkpoint
