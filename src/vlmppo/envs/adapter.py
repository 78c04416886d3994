"""The agent-facing side of an environment: prompt, legal actions, parser, expert, solved test.

One subclass per env family (NumberLine, Blackjack, EZPoints/Points24, MiniGrid, probes). The rest of the
toolkit (collect, labellers, SFT data, PPO, eval) only talks to this interface, so adding an env family is
one registered adapter and nothing else (DESIGN.md §3).

An adapter is built for one prompt style (``env.prompt``), and its prompt, parser and answer formatter
follow that style together, so that SFT targets, PPO's parsing and eval agree by construction:

* ``cot`` / ``action_only``: our prompts (the task and legal actions spelled out, a hint on what to think
  about) and our strict parser (the ``"action"`` value must be exactly one legal action).
* ``rl4vlm`` / ``rl4vlm_action_only`` (gym-cards only): the paper's prompts, in our words, asking for the
  paper's JSON fields, and the paper's parser, which finds the action anywhere after ``"action":``
  (``vlmppo.envs.rl4vlm``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import gymnasium as gym
import numpy as np

from vlmppo.envs import rl4vlm
from vlmppo.envs.parsing import ExpertAction, ParsedAction, format_answer, parse_action

PROMPT_STYLES = ("rl4vlm", "rl4vlm_action_only", "cot", "action_only")
ANSWER_FORMAT = 'Reply with one JSON object in this format: {"thoughts": "...", "action": "..."}'
ANSWER_FORMAT_ACTION_ONLY = 'Reply with one JSON object in this format: {"action": "..."}'


def is_success(total_reward: float) -> bool:
    """RL4VLM's success: the episode's return is positive (what the paper's success rates count)."""
    return total_reward > 0


class EnvAdapter(ABC):
    """Base adapter. Subclasses set ``legal_actions`` and implement the task-specific methods; the
    gym-cards ones also implement the ``rl4vlm_*`` hooks.

    Attributes:
        env_id: The gymnasium id this adapter serves.
        prompt_style: One of ``PROMPT_STYLES``.
        legal_actions: The action strings the model must write. Index i is stepped as
            ``env.step(adapter.to_env_action(i))``; ``VecEnv.step`` takes the indices and maps them itself.
    """

    legal_actions: list[str]
    supports_rl4vlm = False
    # RL4VLM's points parser takes "10" out before looking for "1" (EZPoints and Points24 set it).
    rl4vlm_tens_first = False

    def __init__(self, env_id: str, prompt: str = "cot"):
        if prompt not in PROMPT_STYLES:
            raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {prompt!r}")
        if prompt.startswith("rl4vlm") and not self.supports_rl4vlm:
            raise ValueError(f"the {prompt!r} prompt style exists for the gym_cards tasks only")
        self.env_id = env_id
        self.prompt_style = prompt

    @property
    def is_rl4vlm(self) -> bool:
        return self.prompt_style.startswith("rl4vlm")

    @property
    def action_only(self) -> bool:
        """Whether this style's answers carry no thoughts."""
        return self.prompt_style.endswith("action_only")

    # --- model-facing text ---------------------------------------------------------------------------
    @abstractmethod
    def task_text(self, info: dict) -> str:
        """What the picture shows and what to do, for the current state (no answer format)."""

    def thoughts_hint(self) -> str:
        """What the thoughts should contain (e.g. read out the numbers first); empty for none."""
        return ""

    def prompt(self, info: dict, *, action_only: bool | None = None) -> str:
        """The task prompt for one state in this adapter's style: task, legal actions, answer format.

        Args:
            info: The state (the env's info).
            action_only: Ask for the action alone (True) or with thoughts (False); None: as the style says.

        No chat template and no image placeholder: the policy adds both.
        """
        action_only = self.action_only if action_only is None else action_only
        if self.is_rl4vlm:
            if action_only:
                return rl4vlm.prompt(self.rl4vlm_task(info), [], None, self.rl4vlm_action_hint())
            return rl4vlm.prompt(
                self.rl4vlm_task(info), self.rl4vlm_fields(info), self.rl4vlm_thoughts_hint(),
                self.rl4vlm_action_hint(),
            )  # fmt: skip
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
        """Reads the action from an answer: ``vlmppo.envs.parsing.parse_action`` for our styles,
        ``vlmppo.envs.rl4vlm.find_action`` (the paper's rule) for the rl4vlm ones."""
        if self.is_rl4vlm:
            return rl4vlm.find_action(text, self.legal_actions, rng, tens_first=self.rl4vlm_tens_first)
        return parse_action(text, self.legal_actions, rng)

    def format_answer(self, action_index: int, thoughts: str | None, info: dict | None = None) -> str:
        """The answer this style asks for, with the action ``action_index``; ``parse`` reads it back.

        Args:
            action_index: Index into ``legal_actions``.
            thoughts: The reasoning, or None for an action-only answer.
            info: The state the answer is about: the rl4vlm style writes its fields (e.g. the current
                formula) from it, so it is required there unless ``thoughts`` is None.
        """
        action = self.legal_actions[action_index]
        if not self.is_rl4vlm:
            return format_answer(action, thoughts)
        if thoughts is None:
            return rl4vlm.answer([], None, action)
        if info is None:
            raise ValueError("an rl4vlm answer with thoughts needs the state (info) for its fields")
        return rl4vlm.answer(self.rl4vlm_fields(info), thoughts, action)

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
    def is_solved(self, total_reward: float, info: dict) -> bool:
        """Whether a finished episode reached the task's own goal, from its return and final info.

        Not RL4VLM's success (``is_success``: return > 0): a NumberLine episode that reaches the target
        after a step back is solved but has return 0.
        """

    @abstractmethod
    def expert_score(
        self, info_before: dict, action_index: int, info_after: dict, reward: float
    ) -> tuple[int, str]:
        """Rates one transition 0-10 from the planner's view of progress (the labeller's "score" mode).

        Scale: 10 finishes the task or makes the key move; 8-9 clear progress; 5-7 minor progress;
        1-2 neutral; 0 counter-productive. Each family documents which of these it uses.
        """

    # --- the rl4vlm prompt style (gym-cards adapters) ------------------------------------------------------
    def rl4vlm_task(self, info: dict) -> str:
        """The paper's task description for this state, in our words (no answer format)."""
        raise NotImplementedError

    def rl4vlm_fields(self, info: dict) -> list[rl4vlm.Field]:
        """The paper's JSON fields before ``"thoughts"``, each with its placeholder in the prompt and its
        value in this state (what an expert answer writes)."""
        return []

    def rl4vlm_thoughts_hint(self) -> str:
        """What the prompt shows as the ``"thoughts"`` value."""
        raise NotImplementedError

    def rl4vlm_action_hint(self) -> str:
        """What the prompt shows as the ``"action"`` value (e.g. ``"-" or "+"``)."""
        raise NotImplementedError

    def action_index(self, action: str) -> int:
        """The index of an action string (exact match), for experts and tests."""
        return self.legal_actions.index(action)
