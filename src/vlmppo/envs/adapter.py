"""The agent-facing side of an environment: prompt, legal actions, parser, expert, success.

One subclass per env family (NumberLine, Blackjack, EZPoints/Points24, MiniGrid, probes). The rest of the
toolkit (collect, labellers, SFT data, PPO, eval) only talks to this interface, so adding an env family is
one registered adapter and nothing else (DESIGN.md §3).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import gymnasium as gym
import numpy as np

from vlmppo.envs.parsing import ExpertAction, ParsedAction, format_answer, parse_action

ANSWER_FORMAT = 'Reply with one JSON object in this format: {"thoughts": "...", "action": "..."}'
ANSWER_FORMAT_ACTION_ONLY = 'Reply with one JSON object in this format: {"action": "..."}'


class EnvAdapter(ABC):
    """Base adapter. Subclasses set ``legal_actions`` and implement the task-specific methods.

    Attributes:
        env_id: The gymnasium id this adapter serves.
        legal_actions: The action strings the model must write. Index i is stepped as
            ``env.step(adapter.to_env_action(i))``; ``VecEnv.step`` takes the indices and maps them itself.
    """

    legal_actions: list[str]

    def __init__(self, env_id: str):
        self.env_id = env_id

    # --- model-facing text ---------------------------------------------------------------------------
    @abstractmethod
    def task_text(self, info: dict) -> str:
        """What the picture shows and what to do, for the current state (no answer format)."""

    def thoughts_hint(self) -> str:
        """What the thoughts should contain (e.g. read out the numbers first); empty for none."""
        return ""

    def prompt(self, info: dict, *, action_only: bool = False) -> str:
        """The task prompt for one state: task text, legal actions and answer format.

        No chat template and no image placeholder: the policy adds both.
        """
        actions = ", ".join(f'"{a}"' for a in self.legal_actions)
        lines = [self.task_text(info).strip(), f"Legal actions: {actions}."]
        if action_only:
            lines.append(ANSWER_FORMAT_ACTION_ONLY + ', where "action" is exactly one legal action.')
        else:
            hint = self.thoughts_hint()
            if hint:
                lines.append(hint)
            lines.append(ANSWER_FORMAT + ', where "action" is exactly one legal action.')
        return "\n".join(lines)

    def parse(self, text: str, rng: np.random.Generator) -> ParsedAction:
        """Reads the action from an answer; see ``vlmppo.envs.parsing.parse_action``."""
        return parse_action(text, self.legal_actions, rng)

    def format_answer(self, action_index: int, thoughts: str | None) -> str:
        """The canonical answer for an action; ``parse`` reads it back as ``action_index``."""
        return format_answer(self.legal_actions[action_index], thoughts)

    def to_env_action(self, index: int) -> int:
        """The env's action id for ``legal_actions[index]`` (identity except for MiniGrid)."""
        return index

    # --- expert and scoring --------------------------------------------------------------------------
    @abstractmethod
    def expert(self, env: gym.Env | None, info: dict) -> ExpertAction:
        """The expert's action for the current state, with a short reasoning text.

        Every expert can work from ``info`` alone (pass ``env=None`` to label stored episodes); MiniGrid's
        reads ``env.unwrapped`` when the info lacks the grid (a raw MiniGrid env).
        """

    @abstractmethod
    def is_success(self, total_reward: float, info: dict) -> bool:
        """Whether a finished episode counts as solved, from its return and final info."""

    @abstractmethod
    def expert_score(
        self, info_before: dict, action_index: int, info_after: dict, reward: float
    ) -> tuple[int, str]:
        """Rates one transition 0-10 from the planner's view of progress (the labeller's "score" mode).

        Scale: 10 finishes the task or makes the key move; 8-9 clear progress; 5-7 minor progress;
        1-2 neutral; 0 counter-productive. Each family documents which of these it uses.
        """

    def action_index(self, action: str) -> int:
        """The index of an action string (exact match), for experts and tests."""
        return self.legal_actions.index(action)
