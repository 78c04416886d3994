"""NumberLine: move a number one step at a time until it equals the target."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlmppo.envs import rl4vlm
from vlmppo.envs.adapter import EnvAdapter
from vlmppo.envs.base import FrameEnv
from vlmppo.envs.drawing import BLACK, WHITE, canvas, text_centered, to_array
from vlmppo.envs.parsing import ExpertAction


class NumberLineEnv(FrameEnv):
    """NumberLine (``gym_cards/NumberLine-v0``).

    Description:
        A white 300x300 canvas shows "Target: g" and "Current: p" in large black text, with
        ``0 <= g, p <= max_position`` and ``p != g`` at the start.

    Mission:
        Bring the current number to the target.

    Action space:
        ``Discrete(2)``: 0 subtracts one ("-"), 1 adds one ("+"). The position is clamped to
        ``[0, max_position]``.

    Reward:
        +1 on reaching the target; 0 when the distance to the target shrank; -1 when it did not (a step
        away, or a push against the ends of the line).

    Start:
        As in RL4VLM: start and target are drawn uniformly from ``[0, max_position]``; when they are equal
        the target becomes ``(target + 1) % max_position`` (so a distance of 1 comes in 14 of 36 starts at
        ``max_position=5``). ``uniform_start=True``: the start is drawn uniformly among the positions that
        are not the target (our variant: every distance as often as the line allows).

    Termination:
        Terminated on reaching the target; truncated after ``2 * max_position`` steps (a time limit: the
        state itself is not terminal, so PPO bootstraps from its value).
    """

    def __init__(self, max_position: int = 5, uniform_start: bool = False, render_mode: str | None = None):
        super().__init__(300, 300, render_mode)
        if max_position < 2:
            raise ValueError("max_position must be at least 2")
        self.max_position = max_position
        self.uniform_start = uniform_start
        self.action_space = spaces.Discrete(2)
        self.target = 0
        self.current = 0
        self.steps = 0

    def _new_episode(self) -> None:
        top = self.max_position
        if self.uniform_start:
            self.target = int(self.np_random.integers(0, top + 1))
            start = int(self.np_random.integers(0, top))  # one draw among the top positions != target
            self.current = start + 1 if start >= self.target else start
        else:
            self.current = int(self.np_random.integers(0, top + 1))
            self.target = int(self.np_random.integers(0, top + 1))
            if self.current == self.target:
                self.target = (self.target + 1) % top  # RL4VLM's rule, modulo max_position (not + 1)
        self.steps = 0

    def _transition(self, action: int) -> tuple[float, bool, bool]:
        self.steps += 1
        before = abs(self.current - self.target)
        move = 1 if action == 1 else -1
        self.current = min(max(self.current + move, 0), self.max_position)
        after = abs(self.current - self.target)
        terminated = after == 0
        if terminated:
            reward = 1.0
        elif after < before:
            reward = 0.0
        else:
            reward = -1.0
        truncated = not terminated and self.steps >= 2 * self.max_position
        return reward, terminated, truncated

    def _info(self) -> dict:
        return {"target": self.target, "current": self.current}

    def _frame_key(self):
        return self.target, self.current

    def _draw(self) -> np.ndarray:
        image, draw = canvas(300, 300, WHITE)
        text_centered(draw, 150, 70, f"Target: {self.target}", 44, BLACK)
        text_centered(draw, 150, 170, f"Current: {self.current}", 44, BLACK)
        return to_array(image)


class NumberLineAdapter(EnvAdapter):
    """Prompt, parser and expert for NumberLine. Expert: step toward the target (always wins)."""

    legal_actions = ["-", "+"]
    supports_rl4vlm = True

    def task_text(self, info: dict) -> str:
        return (
            "You are playing Number Line. The image shows two numbers in black on a white background: "
            '"Target" and "Current". Each turn you change the current number by one: "-" subtracts one, '
            '"+" adds one. Make the current number equal to the target.'
        )

    def thoughts_hint(self) -> str:
        return "In your thoughts, first read out the current and target numbers from the image, then decide."

    def expert(self, env: gym.Env, info: dict) -> ExpertAction:
        current, target = info["current"], info["target"]
        if current == target:
            return ExpertAction(None, f"current {current} already equals target {target}: nothing to do")
        action = "+" if target > current else "-"
        return ExpertAction(self.action_index(action), f"current {current}, target {target}: move {action}")

    def is_solved(self, total_reward: float, info: dict) -> bool:
        return info["current"] == info["target"]

    def rl4vlm_task(self, info: dict) -> str:
        return (
            "You are playing the number line game. The image shows a target number and a current number. "
            "Your goal is to bring the current number closer to the target: each turn you either add one "
            "to it or subtract one from it."
        )

    def rl4vlm_fields(self, info: dict) -> list[rl4vlm.Field]:
        return [
            rl4vlm.Field("current number", '"x"', str(info["current"])),
            rl4vlm.Field("target number", '"x"', str(info["target"])),
        ]

    def rl4vlm_thoughts_hint(self) -> str:
        return (
            "read out the current and target numbers first, then think carefully about which action to take"
        )

    def rl4vlm_action_hint(self) -> str:
        return '"-" or "+"'

    def expert_score(self, info_before, action_index, info_after, reward):
        # Uses 10 / 8 / 1 / 0: every move either reaches, approaches, pushes against an end, or retreats.
        before = abs(info_before["current"] - info_before["target"])
        after = abs(info_after["current"] - info_after["target"])
        move = self.legal_actions[action_index]
        if after == 0:
            return 10, f"{move} reaches the target {info_after['target']}"
        if after < before:
            return 8, f"{move} brings {info_before['current']} closer to {info_before['target']}"
        if after == before:
            return 1, f"{move} pushes against the end of the line: no change"
        return 0, f"{move} moves {info_before['current']} away from {info_before['target']}"
