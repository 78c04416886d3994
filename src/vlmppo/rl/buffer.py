"""The rollout buffer (SB3's ``RolloutBuffer`` for a VLM): one PPO rollout and what the update reads from it.

A rollout is ``n_steps`` batched env steps of ``n_envs`` envs. Per env step the buffer keeps what the update
needs to re-score exactly the sampled answer (the frame, the prompt, the earlier turns it showed with
``env.history``, the answer ids as sampled with their
thought/action/key token masks and, with a KL penalty, their log-probs under the reference), the old
log-prob and value, the reward, the done flags and the bootstrap value of a truncated episode. Then:

1. ``add(step, ...)`` once per env step (``rl/rollout.py``), ``finish(last_value)`` after the last one;
2. ``compute_advantages(ppo)``: advantages and returns by the function registered in ``ADVANTAGES``: GAE,
   or the critic-free GRPO and GiGPO of ``rl/groups.py`` (over grouped resets: ``idle`` marks the steps an
   env waited for its group);
3. ``normalize_advantages()``: standardised over the whole rollout, with the mean and std from one function
   (``rl.gae.advantage_moments``) that a data-parallel run replaces by an all-reduced one;
4. ``minibatches(batch_size, rng)``: the update's shuffled minibatches, each split into micro-batches of
   ``Samples`` (the tensors one loss computation reads).

Steps are numbered flat, step-major: index ``i = t * n_envs + n``, the order of ``[T, N].reshape(-1)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from vlmppo.rl.gae import advantage_moments, compute_gae, normalize_advantages

if TYPE_CHECKING:
    from vlmppo.config.schema import PpoConfig
    from vlmppo.models.inputs import Turn


@dataclass
class StepBatch:
    """The sampled answers of one batched env step (``rl.rollout.rollout_step``), before the env steps.

    Attributes:
        images: ``N`` frames, each ``[H, W, C]`` uint8.
        prompts: ``N`` prompt texts.
        answer_ids: ``[N, L]`` long, each answer's ids exactly as sampled (end-of-turn included), then 0.
        answer_lengths: ``[N]`` long, the answer tokens of each row of ``answer_ids``.
        thought_mask: ``[N, L]`` bool, the thought tokens (weighted by ``ppo.thought_coef``).
        action_mask: ``[N, L]`` bool, the action tokens.
        key_mask: ``[N, L]`` bool, the ``"action":`` key tokens (weighted by ``ppo.action_key_coef``).
        old_logp: ``[N]`` fp32, the mixed action log-prob the PPO ratio starts from.
        values: ``[N]`` fp32, V(s) of the observation.
        ref_logp: ``[N, L]`` fp32 per answer token under the KL reference (0 after the answer), or None
            without a KL penalty.
        texts: ``N`` decoded answers.
        actions: ``N`` parsed action indices (None: no legal action parsed).
        invalid: ``[N]`` bool, the answer named no legal action.
        ended_with_eos: ``[N]`` bool, the answer ended with end-of-turn (not cut by ``max_new_tokens``).
        histories: ``N`` tuples of the earlier turns each prompt showed (``env.history``), or None.
    """

    images: list[np.ndarray]
    prompts: list[str]
    answer_ids: Tensor
    answer_lengths: Tensor
    thought_mask: Tensor
    action_mask: Tensor
    key_mask: Tensor
    old_logp: Tensor
    values: Tensor
    ref_logp: Tensor | None
    texts: list[str]
    actions: list[int | None]
    invalid: Tensor
    ended_with_eos: Tensor
    histories: list[tuple[Turn, ...]] | None = None

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class Samples:
    """``B`` steps of a rollout as one loss computation reads them (``RolloutBuffer.samples``).

    ``W`` is the longest answer among these ``B`` steps: ``collate`` pads to it.

    Attributes:
        images: ``B`` frames, ``[H, W, C]`` uint8.
        prompts: ``B`` prompt texts.
        answer_ids: ``[B, W]`` long, answer ids as sampled, 0 after each answer.
        answer_mask: ``[B, W]`` bool, True on the answer tokens.
        thought_mask, action_mask, key_mask: ``[B, W]`` bool (see ``StepBatch``).
        ref_logp: ``[B, W]`` fp32 reference log-probs (0 after each answer), or None.
        old_logp: ``[B]`` fp32, log-probs at rollout time.
        old_values: ``[B]`` fp32, values at rollout time.
        advantages: ``[B]`` fp32, normalised advantages.
        returns: ``[B]`` fp32, the value targets.
        histories: ``B`` tuples of earlier turns (``env.history``), or None: the prompts had none.
    """

    images: list[np.ndarray]
    prompts: list[str]
    answer_ids: Tensor
    answer_mask: Tensor
    thought_mask: Tensor
    action_mask: Tensor
    key_mask: Tensor
    ref_logp: Tensor | None
    old_logp: Tensor
    old_values: Tensor
    advantages: Tensor
    returns: Tensor
    histories: list[tuple[Turn, ...]] | None = None

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class RolloutTiming:
    """Where a rollout's seconds went, beside its total (``RolloutBuffer.seconds``).

    Attributes:
        capture_steps: Steps during which the static decoder captured CUDA graphs (a process's first step,
            or one after its buffers grew): a one-off cost, reported apart from the steady rate.
        capture_s: Wall-clock seconds of those steps (all their work, the capture included).
        values_s: The value pass after the last step: V of the truncated episodes' final observations and
            of the observations after the last step.
    """

    capture_steps: int = 0
    capture_s: float = 0.0
    values_s: float = 0.0


# An advantage estimator: (buffer, the ``ppo`` config section) -> (advantages [T, N], returns [T, N]).
AdvantageFn = Callable[["RolloutBuffer", "PpoConfig"], tuple[Tensor, Tensor]]


def gae_advantages(buffer: RolloutBuffer, ppo: PpoConfig) -> tuple[Tensor, Tensor]:
    """GAE(``ppo.gamma``, ``ppo.gae_lambda``), bootstrapping through truncation, not termination."""
    return compute_gae(
        buffer.rewards,
        buffer.values,
        buffer.terminated,
        buffer.truncated,
        buffer.bootstrap_values,
        buffer.last_value,
        ppo.gamma,
        ppo.gae_lambda,
    )


def grpo_advantages(buffer: RolloutBuffer, ppo: PpoConfig) -> tuple[Tensor, Tensor]:
    """GRPO: each episode's return relative to its group's (``rl.groups``); no critic."""
    return buffer.group_advantages(ppo, state_keys=None)


def gigpo_advantages(buffer: RolloutBuffer, ppo: PpoConfig) -> tuple[Tensor, Tensor]:
    """GiGPO: GRPO's term plus ``ppo.step_weight`` times the step-level one over repeated observations."""
    return buffer.group_advantages(ppo, state_keys=buffer.observation_keys())


# Advantage estimators by name (``ppo.advantage`` picks one).
ADVANTAGES: dict[str, AdvantageFn] = {
    "gae": gae_advantages,
    "grpo": grpo_advantages,
    "gigpo": gigpo_advantages,
}


class RolloutBuffer:
    """``n_steps × n_envs`` env steps of one rollout: tensors ``[T, N]`` per step, answers ``[T, N, L]``.

    Args:
        n_steps: ``T``, batched env steps per rollout.
        n_envs: ``N``, envs stepped together.
        max_answer_tokens: ``L``, the longest answer that can be added (``ppo.max_new_tokens``).
        reference: Keep the answers' per-token reference log-probs (``ppo.kl_coef > 0``).

    Attributes:
        rewards: ``[T, N]`` fp32, the env's reward plus the invalid-action penalty.
        values: ``[T, N]`` fp32, V(s_t) at rollout time.
        old_logp: ``[T, N]`` fp32, the mixed action log-prob at rollout time.
        terminated: ``[T, N]`` bool, a true end at step t (nothing to bootstrap).
        truncated: ``[T, N]`` bool, a time limit at step t.
        bootstrap_values: ``[T, N]`` fp32, V(final observation) where an episode was truncated, else 0.
        last_value: ``[N]`` fp32, V(observation after the last step), set by ``finish``.
        episode_ids: ``[T, N]`` long, one id per episode in this rollout (an episode cut by the rollout's
            start or end counts as its own); ids count up from 0 in order of their first step.
        advantages: ``[T, N]`` fp32 after ``compute_advantages`` (normalised by ``normalize_advantages``).
        returns: ``[T, N]`` fp32 value targets after ``compute_advantages``.
        invalid, ended_with_eos: ``[T, N]`` bool (``StepBatch``); answer_lengths: ``[T, N]`` long.
        idle: ``[T, N]`` bool, the env waited for its group (grouped resets; set by the collector).
        group_stats: The ``rollout/group_*`` statistics of a critic-free estimator.
        episodes: ``{"return", "length", "success", "solved"}`` of the episodes that ended in it.
        seconds: Wall-clock seconds the rollout took (set by the collector); ``timing`` says where they went.
    """

    def __init__(self, n_steps: int, n_envs: int, max_answer_tokens: int, *, reference: bool = False):
        shape, answers = (n_steps, n_envs), (n_steps, n_envs, max_answer_tokens)
        self.n_steps, self.n_envs, self.max_answer_tokens = n_steps, n_envs, max_answer_tokens
        self.rewards, self.values, self.old_logp = (torch.zeros(shape) for _ in range(3))
        self.bootstrap_values, self.advantages, self.returns = (torch.zeros(shape) for _ in range(3))
        self.terminated, self.truncated, self.invalid, self.ended_with_eos = (
            torch.zeros(shape, dtype=torch.bool) for _ in range(4)
        )
        self.last_value = torch.zeros(n_envs)
        self.idle = torch.zeros(shape, dtype=torch.bool)
        self.group_stats: dict[str, float] = {}
        self.episode_ids = torch.zeros(shape, dtype=torch.long)
        self.answer_lengths = torch.zeros(shape, dtype=torch.long)
        self.answer_ids = torch.zeros(answers, dtype=torch.int32)  # token ids fit; half of long's memory
        self.thought_mask, self.action_mask, self.key_mask = (
            torch.zeros(answers, dtype=torch.bool) for _ in range(3)
        )
        self.ref_logp = torch.zeros(answers) if reference else None
        self.images: list[np.ndarray] = []
        self.prompts: list[str] = []
        self.texts: list[str] = []
        self.actions: list[int | None] = []
        self.histories: list[tuple[Turn, ...]] = []  # kept only when the prompts had earlier turns
        self.episodes: list[dict] = []
        self.seconds = 0.0
        self.timing = RolloutTiming()
        self.steps_added = 0
        self._episode = torch.arange(n_envs)  # the episode id each env is in
        self._next_episode = n_envs

    @property
    def size(self) -> int:
        """Env steps the rollout holds when full: ``T · N``."""
        return self.n_steps * self.n_envs

    def add(
        self,
        step: StepBatch,
        rewards: Tensor,
        terminated: Tensor,
        truncated: Tensor,
        bootstrap_values: Tensor,
    ) -> None:
        """Record the next batched env step.

        Args:
            step: The sampled answers (``[N, ≤L]``) and their log-probs and values.
            rewards: ``[N]`` float, reward + invalid-action penalty.
            terminated: ``[N]`` bool; truncated: ``[N]`` bool (the step's done flags).
            bootstrap_values: ``[N]`` float, V(final observation) where truncated, else 0.
        """
        t = self.steps_added
        if t >= self.n_steps:
            raise ValueError(f"the buffer already holds its {self.n_steps} steps")
        width = step.answer_ids.shape[1]
        if width > self.max_answer_tokens or len(step) != self.n_envs:
            raise ValueError(
                f"a step of {len(step)} answers of up to {width} tokens does not fit a buffer of "
                f"{self.n_envs} envs and {self.max_answer_tokens} tokens"
            )
        self.rewards[t], self.terminated[t], self.truncated[t] = rewards, terminated, truncated
        self.bootstrap_values[t] = bootstrap_values
        self.values[t], self.old_logp[t] = step.values, step.old_logp
        self.invalid[t], self.ended_with_eos[t] = step.invalid, step.ended_with_eos
        self.answer_lengths[t] = step.answer_lengths
        self.answer_ids[t, :, :width] = step.answer_ids
        self.thought_mask[t, :, :width] = step.thought_mask
        self.action_mask[t, :, :width] = step.action_mask
        self.key_mask[t, :, :width] = step.key_mask
        if self.ref_logp is not None:
            self.ref_logp[t, :, :width] = step.ref_logp
        self.images += step.images
        self.prompts += step.prompts
        self.texts += step.texts
        self.actions += step.actions
        if step.histories is not None:
            self.histories += step.histories
        self.episode_ids[t] = self._episode
        done = self.terminated[t] | self.truncated[t]  # the env's next step starts a new episode
        new = int(done.sum())
        self._episode[done] = torch.arange(self._next_episode, self._next_episode + new)
        self._next_episode += new
        self.steps_added += 1

    def finish(self, last_value: Tensor) -> None:
        """The rollout is complete: ``last_value`` ``[N]`` is V(observation after its last step)."""
        if self.steps_added != self.n_steps:
            raise ValueError(f"the buffer holds {self.steps_added} of its {self.n_steps} steps")
        self.last_value = last_value.to(torch.float32)

    def episode_rewards(self) -> Tensor:
        """``[E]`` fp32: the summed (undiscounted) reward of each episode id in this rollout."""
        totals = torch.zeros(int(self.episode_ids.max()) + 1)
        return totals.index_add_(0, self.episode_ids.reshape(-1), self.rewards.reshape(-1))

    def compute_advantages(self, ppo: PpoConfig, method: str = "gae") -> None:
        """Fill ``advantages`` and ``returns`` (``[T, N]``) with the estimator ``method`` of ``ADVANTAGES``.

        Args:
            ppo: The ``ppo`` config section (``gamma``, ``gae_lambda``, ...).
            method: A key of ``ADVANTAGES``.
        """
        if method not in ADVANTAGES:
            raise ValueError(f"unknown advantage estimator {method!r}; known: {', '.join(ADVANTAGES)}")
        self.advantages, self.returns = ADVANTAGES[method](self, ppo)

    def group_advantages(self, ppo: PpoConfig, state_keys: Tensor | None) -> tuple[Tensor, Tensor]:
        """GRPO/GiGPO advantages and returns-to-go ``[T, N]`` (``rl.groups``); keeps their statistics."""
        from vlmppo.rl.groups import group_advantages

        result = group_advantages(
            self.rewards,
            self.terminated | self.truncated,
            self.idle,
            ppo.group_size,
            norm=ppo.group_norm,
            gamma=ppo.gamma,
            state_keys=state_keys,
            step_weight=ppo.step_weight,
        )
        self.group_stats = result.stats
        return result.advantages, result.returns

    def observation_keys(self) -> Tensor:
        """``[T, N]`` int64: a hash of each step's observation (frame bytes and prompt text), GiGPO's anchor
        state: equal keys, equal input to the policy."""
        import hashlib

        keys = torch.zeros(self.n_steps * self.n_envs, dtype=torch.long)
        for flat, (image, prompt) in enumerate(zip(self.images, self.prompts, strict=True)):
            digest = hashlib.blake2b(prompt.encode(), digest_size=8)
            digest.update(str(image.shape).encode())
            digest.update(image.tobytes())
            keys[flat] = int.from_bytes(digest.digest(), "little", signed=True)
        return keys.reshape(self.n_steps, self.n_envs)

    def normalize_advantages(
        self, moments: Callable[[Tensor], tuple[Tensor, Tensor]] = advantage_moments
    ) -> None:
        """Standardise ``advantages`` over the whole rollout; ``moments`` gives their mean and std (a
        data-parallel run passes one that all-reduces them, so every rank divides by the same numbers)."""
        flat = normalize_advantages(self.advantages.reshape(-1), moments=moments)
        self.advantages = flat.reshape(self.n_steps, self.n_envs)

    def samples(self, indices: Sequence[int] | np.ndarray) -> Samples:
        """The flat steps ``indices`` (``[B]`` ints) as tensors, answers cut to the longest of them."""
        index = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        lengths = self.answer_lengths.reshape(-1)[index]
        width = int(lengths.max()) if len(index) else 0

        def answers(tensor: Tensor) -> Tensor:
            return tensor.reshape(self.size, self.max_answer_tokens)[index, :width]

        positions = torch.arange(width)
        return Samples(
            images=[self.images[flat] for flat in index.tolist()],
            prompts=[self.prompts[flat] for flat in index.tolist()],
            answer_ids=answers(self.answer_ids).long(),
            answer_mask=positions[None, :] < lengths[:, None],
            thought_mask=answers(self.thought_mask),
            action_mask=answers(self.action_mask),
            key_mask=answers(self.key_mask),
            ref_logp=answers(self.ref_logp) if self.ref_logp is not None else None,
            old_logp=self.old_logp.reshape(-1)[index],
            old_values=self.values.reshape(-1)[index],
            advantages=self.advantages.reshape(-1)[index],
            returns=self.returns.reshape(-1)[index],
            histories=[self.histories[flat] for flat in index.tolist()] if self.histories else None,
        )

    def minibatches(self, batch_size: int, rng: np.random.Generator) -> Iterator[Minibatch]:
        """One epoch: the steps in a random order (drawn now from ``rng``), cut into minibatches of
        ``batch_size``; a last partial minibatch is dropped (``ppo.minibatch_size`` divides the rollout in
        the shipped presets; the dry-run reports what is dropped)."""
        order = rng.permutation(self.size)
        starts = range(0, self.size - batch_size + 1, batch_size)
        return (Minibatch(self, order[start : start + batch_size]) for start in starts)


@dataclass
class Minibatch:
    """One optimizer step's share of a rollout: flat step ``indices`` ``[B]`` of ``buffer``."""

    buffer: RolloutBuffer
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def micro_batches(self, size: int) -> Iterator[Samples]:
        """The minibatch in order, ``size`` steps at a time (gradient accumulation), as ``Samples``."""
        for start in range(0, len(self.indices), size):
            yield self.buffer.samples(self.indices[start : start + size])
