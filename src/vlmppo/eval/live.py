"""Greedy evals of the policy a PPO (or SFT) run is training, in its own process (``ppo.eval_every``,
``sft.eval_episodes``).

Where the run's rollouts sample at ``ppo.temperature``, this plays the eval's own episodes (``eval.seeds``,
``ppo.eval_episodes`` per seed, the reset seeds of ``eval.runner.reset_seed``) through the same episode loop
as ``vlmppo eval`` (``eval.runner.play``), with greedy answers of the current weights, so its success rate is
the one ``vlmppo eval`` would report for a checkpoint saved at that update. It leaves the run as it found it:
every random stream (torch, CUDA, numpy, Python) is restored, the envs are its own, the model goes back to
the mode it was in, the rollout's static decoder is not used (its buffers and graphs stay the rollout's), and
a resumed run therefore matches a straight one. The answers come from the model's own dtype without the run's
autocast, as ``vlmppo eval`` computes them from a checkpoint.

``train_ppo(cfg, evaluate=greedy_eval)`` is how the ``ppo`` and ``pipeline`` commands call it (the PPO loop
is a layer below the eval code and cannot import it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from typing import TYPE_CHECKING

import numpy as np

from vlmppo.config import Config

if TYPE_CHECKING:
    from vlmppo.rl.policy import ActorCritic


class LiveActor:
    """The eval's actor (``answer``, ``values``) over a training policy's current weights, greedy."""

    def __init__(self, policy: ActorCritic, max_new_tokens: int):
        from vlmppo.models.generation import Generator

        model = policy.loaded.model
        if policy.sampler is not None:  # the merged copy the rollout samples from (LoRA on a GPU)
            if policy.sampler.stale:
                policy.sampler.refresh(model)
            model = policy.sampler.model
        loaded = dataclasses.replace(policy.loaded, model=model)
        # transformers' generate (the reference decoder), never the static one: that keeps buffers and CUDA
        # graphs per model between calls, which the rollout's sampling would then share with the eval.
        self.generator = Generator(loaded, policy.device, "explicit", "generate")
        self.max_new_tokens = max_new_tokens

    def answer(self, observations, prompts, histories=None) -> tuple[list[str], list[int]]:
        texts, ids = self.generator.generate_answers(
            observations, prompts, temperature=0.0, max_new_tokens=self.max_new_tokens, histories=histories
        )
        return texts, [len(answer) for answer in ids]

    def values(self, observations, infos, adapter, histories=None) -> list[None]:
        return [None] * len(observations)  # the eval/* metrics need none: no value pass per step


def greedy_eval(policy: ActorCritic, cfg: Config, episodes: int | None = None) -> dict[str, float]:
    """Play ``episodes`` (default ``ppo.eval_episodes``) greedy episodes per ``eval.seeds`` seed with the
    current weights. ``policy``: an `ActorCritic`, or anything with its ``loaded``, ``sampler`` (None: sample
    from ``loaded.model``) and ``device`` (SFT's evals: ``vlmppo.sft.steps.env_eval``).

    Returns:
        ``eval/success_rate``, ``eval/solved_rate``, ``eval/return_mean``, ``eval/length_mean``,
        ``eval/invalid_action_rate``, ``eval/episodes`` and ``time/eval_s`` (wall seconds of the eval).
    """
    import torch

    from vlmppo.envs import adapter_from_config
    from vlmppo.eval.metrics import summarize
    from vlmppo.eval.runner import play

    started = time.perf_counter()
    eval_cfg = cfg.model_copy(
        update={
            "eval": cfg.eval.model_copy(
                update={"episodes": episodes or cfg.ppo.eval_episodes, "greedy": True, "trajectories": 0}
            )
        }
    )
    adapter = adapter_from_config(cfg.env)
    model = policy.loaded.model
    was_training = model.training
    with untouched_random_streams(policy.device), torch.no_grad():
        model.eval()
        try:
            played = play(eval_cfg, adapter, LiveActor(policy, cfg.eval.max_new_tokens), None, None)
        finally:
            model.train(was_training)
    m = summarize(played.episodes, played.steps, legal_actions=adapter.legal_actions, wall_s=played.wall_s)
    return {
        "eval/success_rate": m["success_rate"],
        "eval/solved_rate": m["solved_rate"],
        "eval/return_mean": m["return_mean"],
        "eval/length_mean": m["length_mean"],
        "eval/invalid_action_rate": m["invalid_action_rate"],
        "eval/episodes": len(played.episodes),
        "time/eval_s": time.perf_counter() - started,
    }


@contextlib.contextmanager
def untouched_random_streams(device: str):
    """Every global random stream (torch's CPU and ``device``'s CUDA generator, numpy's, Python's) as it was
    on entry, whatever ran inside."""
    import torch

    where = torch.device(device)
    cuda = (
        [torch.cuda.current_device() if where.index is None else where.index] if where.type == "cuda" else []
    )
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
