"""Who acts during `collect` (and the baselines of `eval`): the env's expert, uniform random, or a VLM.

Every policy answers a batch of observations at once, so a VLM checkpoint generates for all envs in one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Decision:
    """One policy answer: the env action index, the raw text (VLM only) and whether it failed to parse."""

    index: int
    answer: str | None = None
    invalid: bool = False
    span: tuple[int, int] | None = None


class ExpertPolicy:
    """The env's expert; with probability ``epsilon`` a uniformly random legal action instead."""

    name = "expert"

    def __init__(self, adapter, rng: np.random.Generator, epsilon: float = 0.0):
        self.adapter, self.rng, self.epsilon = adapter, rng, epsilon

    def act(self, envs, observations, infos, prompts, histories=None) -> list[Decision]:
        decisions = []
        for env, info in zip(envs, infos, strict=True):
            n_actions = len(self.adapter.legal_actions)
            if self.epsilon and self.rng.random() < self.epsilon:
                decisions.append(Decision(int(self.rng.integers(n_actions))))
                continue
            expert = self.adapter.expert(env, info)
            # An expert that cannot act (e.g. a formula that can no longer reach the target) falls back
            # to a random action so that the episode still ends; the label stage records why.
            index = expert.index if expert.index is not None else int(self.rng.integers(n_actions))
            decisions.append(Decision(index))
        return decisions


class RandomPolicy:
    """Uniformly random legal actions."""

    name = "random"

    def __init__(self, adapter, rng: np.random.Generator):
        self.adapter, self.rng = adapter, rng

    def act(self, envs, observations, infos, prompts, histories=None) -> list[Decision]:
        n_actions = len(self.adapter.legal_actions)
        return [Decision(int(self.rng.integers(n_actions))) for _ in envs]


class VlmPolicy:
    """A VLM checkpoint: one batched generate over all envs' (frame, prompt) pairs, answers parsed per env."""

    name = "checkpoint"

    def __init__(
        self, generator, adapter, rng: np.random.Generator, *, temperature: float, max_new_tokens: int
    ):
        self.generator, self.adapter, self.rng = generator, adapter, rng
        self.temperature, self.max_new_tokens = temperature, max_new_tokens

    def act(self, envs, observations, infos, prompts, histories=None) -> list[Decision]:
        answers = self.generator.generate_text(
            observations,
            prompts,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            histories=histories,  # earlier turns (env.history); the baselines above need none
        )
        decisions = []
        for text in answers:
            parsed = self.adapter.parse(text, self.rng)
            decisions.append(Decision(parsed.index, text, parsed.invalid, parsed.span))
        return decisions
