"""The PPO loop (RL4VLM): sample thoughts + action for all envs at once, GAE (or GRPO/GiGPO), clipped updates.

Reads top to bottom in phases: 1. collect a rollout into the buffer (``rl/rollout.py``, ``rl/buffer.py``),
2. advantages, 3. PPO epochs (``rl/update.py``), 4. log, 5. checkpoint (``rl/checkpointing.py``). What comes
before the loop — the checks, the model, the optimizer, the envs, a resume — is ``rl/startup.py``.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vlmppo.config import Config
from vlmppo.errors import ConfigError
from vlmppo.locks import locked
from vlmppo.rl.buffer import RolloutBuffer
from vlmppo.rl.checkpointing import save_run
from vlmppo.rl.history import HistoryWindows
from vlmppo.rl.losses import explained_variance
from vlmppo.rl.policy import ActorCritic
from vlmppo.rl.rollout import collect_rollout
from vlmppo.rl.run import PpoRun
from vlmppo.rl.startup import start_run
from vlmppo.rl.update import TrainingDiverged, ppo_epochs

if TYPE_CHECKING:
    from vlmppo.envs.adapter import EnvAdapter

SAMPLES_PER_LOG = 8  # sample answers written every ppo.log_samples_every updates
# The greedy eval during PPO (``ppo.eval_every``): (policy, cfg) -> its ``eval/*`` and ``time/eval_s`` metrics.
Evaluator = Callable[[ActorCritic, Config], dict]


@dataclass
class PpoResult:
    out_dir: Path
    updates: int
    env_steps: int
    last_metrics: dict
    stopped_by: str | None = None  # the signal that stopped the run early, if any
    checkpoint: Path | None = None
    resume_changes: list[str] = field(default_factory=list)  # settings changed since the resumed checkpoint


@locked("ppo")
def train_ppo(
    cfg: Config,
    *,
    on_update: Callable[[int, int, dict], None] | None = None,
    resume: str | None = None,
    evaluate: Evaluator | None = None,
) -> PpoResult:
    """Run PPO as configured; metrics every update in ``runs/<name>/ppo/metrics.jsonl``, checkpoints
    every ``ppo.save_every`` updates, at the end, and on SIGTERM/SIGUSR1 (then it returns early with
    ``stopped_by`` set). ``resume``: None, ``auto`` or a checkpoint path.

    ``on_update(update, total_updates, metrics)`` is called after each update's metrics are logged (and
    after the start's greedy eval, as update 0). ``evaluate(policy, cfg)``: the greedy eval of the current
    policy every ``ppo.eval_every`` updates, whose ``eval/*`` metrics join the update's row
    (``vlmppo.eval.live.greedy_eval``; required when ``ppo.eval_every`` is set).
    """
    from vlmppo.rl.distributed import agree_stop, all_reduced_moments, reduce_metrics
    from vlmppo.signals import stop_handlers

    check_evaluator(cfg, evaluate)
    run = start_run(cfg, resume)  # checks, model, optimizer, envs; a resume restores all of them
    ppo, first, metrics, stopped_by = cfg.ppo, run.update + 1, {}, None
    phases = PhaseMeter(run.device)
    with run_outputs(run) as (tracker, samples), stop_handlers() as stop:
        if tracker is not None and first == 1 and ppo.eval_every:  # the curve starts at the start policy
            start = {"update": 0, "env_steps": run.env_steps, **evaluate(run.policy, cfg)}
            tracker.log(start)
            if on_update:
                on_update(0, run.total_updates, start)
        for update in range(first, run.total_updates + 1):
            run.update = update
            # 1. collect rollouts (each rank its own envs; GRPO/GiGPO: every group starts a new round, so none
            # straddles two rollouts, and the windows of earlier turns start empty with them)
            if run.vec.group_size is not None:
                run.obs, run.infos = run.vec.reset()
                if run.history is not None:
                    run.history = HistoryWindows(run.vec.n_envs, run.history.size)
            with phases.phase("rollout"):
                buffer, run.obs, run.infos = collect_rollout(
                    run.policy, run.vec, run.obs, run.infos, cfg, run.history
                )
            run.env_steps += buffer.size * run.world
            run.recent_episodes.extend(buffer.episodes)
            # 2. advantages; GAE's normalised by the statistics of every rank's rollout (GRPO/GiGPO's are
            # relative to their groups already, and a 0 there means no signal)
            buffer.compute_advantages(ppo, ppo.advantage)
            if ppo.advantage == "gae":
                buffer.normalize_advantages(all_reduced_moments(run.accelerator))
            check_finite_rollout(buffer, run.checkpoint)
            # 3. PPO epochs (gradients averaged over ranks)
            with phases.phase("update"):
                train_stats = ppo_epochs(
                    run.policy, run.optimizer, buffer, cfg, run.rng, run.guard, run.accelerator, run.scorer,
                    value_only=update <= ppo.value_warmup_updates,  # the value warm-up: the value head alone
                )  # fmt: skip
            with phases.phase("refresh"):  # every rank refreshes its merged sampling copy now, timed apart
                refresh_sampling_copy(run.policy)
            run.scheduler.step()
            # 4. log (reduced over ranks; rank 0 writes)
            metrics = update_metrics(run, buffer, train_stats, phases)
            metrics = reduce_metrics(run.accelerator, metrics)
            if tracker is not None:
                if ppo.eval_every and (update % ppo.eval_every == 0 or update == run.total_updates):
                    metrics.update(evaluate(run.policy, cfg))  # greedy, on rank 0, not in time/*_s above
                tracker.log(metrics)
                if update % ppo.log_samples_every == 0 or update == first:
                    rows = sample_rows(buffer, update, run.vec.adapter)
                    samples.write_many(rows)
                    tracker.log_samples(rows, run.env_steps)
                if on_update:
                    on_update(update, run.total_updates, metrics)
            # 5. checkpoint (a stop signal on any rank stops all after this same update)
            stop_now = agree_stop(run.accelerator, stop.requested)
            if update % ppo.save_every == 0 or update == run.total_updates or stop_now:
                meta = tracker.checkpoint_meta() if tracker is not None else {}
                save_run(run, metrics, meta)  # + the W&B run a resume continues
            if stop_now:
                stopped_by = stop.signal_name or "a signal on another rank"
                break
    return PpoResult(
        run.out, run.saved_update, run.env_steps, metrics, stopped_by, run.checkpoint, run.resume_changes
    )


def check_evaluator(cfg: Config, evaluate: Evaluator | None) -> None:
    """ConfigError for ``ppo.eval_every`` without an evaluator to run (a direct call of ``train_ppo``)."""
    if cfg.ppo.eval_every and evaluate is None:
        raise ConfigError(
            f"ppo.eval_every={cfg.ppo.eval_every} asks for greedy evals during PPO, but train_ppo was called "
            "without an evaluator.",
            hint="Pass evaluate=vlmppo.eval.live.greedy_eval (the ppo and pipeline commands do), or set "
            "ppo.eval_every=null.",
        )


@contextlib.contextmanager
def run_outputs(run: PpoRun):
    """Rank 0's tracker (``metrics.jsonl``, TensorBoard, W&B) and sample log; (None, None) on other ranks."""
    from vlmppo.io import JsonlWriter
    from vlmppo.tracking import Tracker

    if not run.main:
        yield None, None
        return
    cfg = run.cfg
    with (
        Tracker(
            run.out,
            cfg.tracking,
            step_key="update",
            run_name=cfg.run.name,
            resume_step=run.update,
            x_key="env_steps",
            config=cfg.model_dump(mode="json"),
            resume_from=run.checkpoint,
            hparam_metrics=("rollout/success_rate", "rollout/ep_return_mean"),
        ) as tracker,
        JsonlWriter(run.out / "samples.jsonl") as samples,
    ):
        yield tracker, samples


def check_finite_rollout(buffer: RolloutBuffer, last_checkpoint: Path | None) -> None:
    """TrainingDiverged when the rollout's log-probs or values are NaN/inf: the model itself is broken."""
    if not (torch.isfinite(buffer.old_logp).all() and torch.isfinite(buffer.values).all()):
        raise TrainingDiverged(
            "PPO diverged: the rollout's log-probs or values are NaN/inf, so the model itself is broken; "
            f"no checkpoint was written from it (last good one: {last_checkpoint or 'none'}).",
            hint="Resume from the last good checkpoint with a lower ppo.lr or model.dtype=float32.",
        )


def update_metrics(run: PpoRun, buffer: RolloutBuffer, train_stats: dict, phases: PhaseMeter) -> dict:
    """Phase 4's row of ``metrics.jsonl``: counters, the rollout's and the update's statistics, LRs, time
    and, on a GPU, peak memory (of the process so far, and of this update's rollout and PPO epochs)."""
    metrics = {
        "update": run.update,
        "env_steps": run.env_steps,
        **rollout_metrics(buffer, run.recent_episodes),
        **buffer.group_stats,
        **train_stats,
        "train/lr": run.optimizer.param_groups[0]["lr"],
        "time/update_s": phases.seconds["update"],
        # The merged sampling copy's W + dW after the update (rl/merged.py); 0 without one.
        "time/refresh_s": phases.seconds["refresh"],
    }
    if run.policy.value_head is not None:
        values, returns = buffer.values.reshape(-1), buffer.returns.reshape(-1)
        metrics["train/explained_variance"] = explained_variance(values, returns)
        metrics["train/lr_value_head"] = run.optimizer.param_groups[1]["lr"]
    else:  # GRPO/GiGPO: no values to report
        del metrics["rollout/value_mean"]
    if phases.cuda:
        metrics["sys/gpu_mem_peak_gb"] = phases.process_peak_gb()
        metrics["sys/gpu_mem_peak_rollout_gb"] = phases.peak_gb["rollout"]
        metrics["sys/gpu_mem_peak_update_gb"] = phases.peak_gb["update"]
    return metrics


class PhaseMeter:
    """Wall-clock seconds and peak GPU memory of each phase of an update (rollout, update, refresh).

    On a GPU each phase starts and ends with a synchronisation, so kernels one phase queued are not
    counted in the next one's time (one sync per phase: nothing next to a rollout's seconds), and with the
    allocator's peak reset, so its peak is its own. ``process_peak_gb`` is the peak since the run started,
    what ``sys/gpu_mem_peak_gb`` always reported.
    """

    def __init__(self, device: str):
        self.cuda = torch.cuda.is_available() and str(device).startswith("cuda")
        self.seconds: dict[str, float] = {}
        self.peak_gb: dict[str, float] = {}
        self._process_peak = 0.0

    def _peak_so_far(self) -> float:
        self._process_peak = max(self._process_peak, torch.cuda.max_memory_allocated() / 2**30)
        return self._process_peak

    def process_peak_gb(self) -> float:
        return self._peak_so_far()

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.cuda:
            torch.cuda.synchronize()
            self._peak_so_far()  # what happened between phases (logging, a checkpoint) counts too
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_gb[name] = torch.cuda.max_memory_allocated() / 2**30
            self._peak_so_far()
        self.seconds[name] = time.perf_counter() - started


def refresh_sampling_copy(policy) -> None:
    """Mark the policy's weights changed and, with a merged sampling copy (``rl/merged.py``), refresh it
    now: otherwise the next rollout's first ``sample`` does, inside the rollout's time."""
    policy.weights_changed()
    if policy.sampler is not None and policy.sampler.stale:
        policy.sampler.refresh(policy.loaded.model)


def rollout_metrics(buffer: RolloutBuffer, recent_episodes: deque) -> dict:
    """``rollout/*`` and rollout ``time/*`` metrics: episode rates over the recent episodes, the rest over
    this rollout's steps."""
    steps = buffer.size
    episodes = list(recent_episodes)
    answer_tokens = int(buffer.answer_lengths.sum())

    def episode_mean(key: str) -> float | None:
        return float(np.mean([episode[key] for episode in episodes])) if episodes else None

    return {
        "rollout/ep_return_mean": episode_mean("return"),
        "rollout/ep_length_mean": episode_mean("length"),
        # success: RL4VLM's (return > 0), the one to compare with the paper; solved: the task's own goal.
        "rollout/success_rate": episode_mean("success"),
        "rollout/solved_rate": episode_mean("solved"),
        "rollout/episodes": len(buffer.episodes),
        "rollout/invalid_action_rate": int(buffer.invalid.sum()) / steps,
        "rollout/reward_mean": float(buffer.rewards.mean()),
        "rollout/answer_tokens_mean": answer_tokens / steps,
        # An answer that runs to max_new_tokens without end-of-turn: RL can teach a model to ramble on.
        "rollout/ended_with_eos_rate": int(buffer.ended_with_eos.sum()) / steps,
        "rollout/value_mean": float(buffer.values.mean()),
        **rollout_time_metrics(buffer),
        "time/gen_tokens_per_s": answer_tokens / max(buffer.seconds, 1e-9),
    }


def rollout_time_metrics(buffer: RolloutBuffer) -> dict:
    """The rollout's ``time/*`` metrics. ``env_steps_per_s`` is the whole rollout's rate (every step, the value
    pass after them, a one-off graph capture); ``steady_env_steps_per_s`` the same without the steps in which
    the static decoder captured CUDA graphs (a process's first step: what a long run settles at), None when
    every step captured; ``capture_s`` the seconds of those steps, ``values_s`` of the value pass."""
    timing, steps = buffer.timing, buffer.size
    steady_steps = steps - timing.capture_steps * buffer.n_envs
    steady_seconds = buffer.seconds - timing.capture_s
    return {
        "time/rollout_s": buffer.seconds,
        "time/env_steps_per_s": steps / max(buffer.seconds, 1e-9),
        "time/steady_env_steps_per_s": steady_steps / max(steady_seconds, 1e-9) if steady_steps else None,
        "time/capture_s": timing.capture_s,
        "time/capture_steps": timing.capture_steps,
        "time/values_s": timing.values_s,
    }


def sample_rows(buffer: RolloutBuffer, update: int, adapter: EnvAdapter) -> list[dict]:
    """The first few answers of this rollout (step-major), for people to read what the agent thinks."""
    rows = []
    for index in range(min(SAMPLES_PER_LOG, buffer.size)):
        step, env = divmod(index, buffer.n_envs)
        action = buffer.actions[index]
        rows.append(
            {
                "update": update,
                "t": step,
                "env": env,
                "text": buffer.texts[index],
                "action": adapter.legal_actions[action] if action is not None else None,
                "invalid": bool(buffer.invalid[step, env]),
                "reward": float(buffer.rewards[step, env]),
                "value": float(buffer.values[step, env]),
            }
        )
    return rows
