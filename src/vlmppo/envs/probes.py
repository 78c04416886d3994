"""Probe environments: tiny tasks whose right answer is known, to prove that PPO learns.

In the spirit of Andy Jones' "debugging RL" probes: each one isolates one thing the learner must get
right, on 64x64 frames so tiny random VLMs can run them on a CPU in minutes.

* ``probe/Constant-v0``: one step, reward +1 whatever the action: the value must go to 1.
* ``probe/Color-v0``: a red or blue frame; "left" pays for red, "right" for blue: the policy must look.
* ``probe/TwoStep-v0``: reward only at the second step, and the frame says which step it is: the value
  must learn gamma-discounting and bootstrapping through GAE.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlmppo.envs.adapter import EnvAdapter
from vlmppo.envs.base import FrameEnv
from vlmppo.envs.parsing import ExpertAction

SIZE = 64
COLORS = {"red": (255, 0, 0), "blue": (0, 0, 255), "grey": (128, 128, 128),
          "green": (0, 160, 0), "yellow": (255, 220, 0), "black": (0, 0, 0)}  # fmt: skip
PROBE_ACTIONS = ["left", "right"]


def _fill(color: str) -> np.ndarray:
    return np.broadcast_to(np.array(COLORS[color], dtype=np.uint8), (SIZE, SIZE, 3)).copy()


class _ProbeEnv(FrameEnv):
    def __init__(self, render_mode: str | None = None):
        super().__init__(SIZE, SIZE, render_mode)
        self.action_space = spaces.Discrete(len(PROBE_ACTIONS))


class ConstantEnv(_ProbeEnv):
    """Constant probe (``probe/Constant-v0``).

    Description:
        A plain grey 64x64 frame.

    Mission:
        None: any action is rewarded.

    Action space:
        ``Discrete(2)``: "left", "right".

    Reward:
        +1 for any action.

    Termination:
        Terminated after the first step.
    """

    def _new_episode(self) -> None:
        pass

    def _transition(self, action: int) -> tuple[float, bool, bool]:
        return 1.0, True, False

    def _draw(self) -> np.ndarray:
        return _fill("grey")

    def _info(self) -> dict:
        return {}


class ColorEnv(_ProbeEnv):
    """Colour probe (``probe/Color-v0``).

    Description:
        The whole 64x64 frame is red or blue, chosen by the env's RNG (50/50). With ``steps=n`` (``env.kwargs``)
        an episode shows ``n`` such frames, all drawn at reset (the sequence depends on the seed only), the
        ``k``-th with ``k`` white squares along its top edge: a multi-step probe whose states repeat across
        the episodes of one seed, where each step's own answer earns its own reward (step-level credit).

    Mission:
        Answer "left" for red, "right" for blue.

    Action space:
        ``Discrete(2)``: 0 "left", 1 "right".

    Reward:
        +1 for the correct action, 0 otherwise, at every step.

    Termination:
        Terminated after ``steps`` steps (default 1). ``info`` has ``color``, ``correct_action`` (the string)
        and ``correct_index``; with ``steps > 1`` also ``step`` (1-based) and ``steps``.
    """

    def __init__(self, render_mode: str | None = None, steps: int = 1):
        super().__init__(render_mode)
        if steps < 1:
            raise ValueError(f"probe/Color steps must be at least 1, got {steps}")
        self.steps, self.colors, self.step_index = steps, ["red"], 0
        self.done = False

    @property
    def color(self) -> str:
        return self.colors[min(self.step_index, self.steps - 1)]

    def _new_episode(self) -> None:
        self.colors = ["red" if self.np_random.integers(0, 2) == 0 else "blue" for _ in range(self.steps)]
        self.step_index, self.done = 0, False

    def _transition(self, action: int) -> tuple[float, bool, bool]:
        reward = 1.0 if action == self._info()["correct_index"] else 0.0
        self.step_index += 1
        self.done = self.step_index >= self.steps
        return reward, self.done, False

    def _draw(self) -> np.ndarray:
        # The final frame is black so it carries no hint about the next episode.
        frame = _fill("black" if self.done else self.color)
        if self.steps > 1 and not self.done:
            for k in range(self.step_index + 1):
                frame[2:8, 2 + 8 * k : 8 + 8 * k] = 255
        return frame

    def _info(self) -> dict:
        index = 0 if self.color == "red" else 1
        info = {"color": self.color, "correct_action": PROBE_ACTIONS[index], "correct_index": index}
        if self.steps > 1:
            info.update(step=self.step_index + 1, steps=self.steps)
        return info


class TwoStepEnv(_ProbeEnv):
    """Two-step probe (``probe/TwoStep-v0``).

    Description:
        The 64x64 frame is green at step 1, yellow at step 2 and black once the episode is over, so the
        value function can tell the steps apart.

    Mission:
        None: the reward comes at the second step whatever the actions.

    Action space:
        ``Discrete(2)``: "left", "right".

    Reward:
        0 at step 1, +1 at step 2.

    Termination:
        Terminated after step 2. ``info["step"]`` is the step about to be taken (1 or 2; 3 when over).
    """

    def __init__(self, render_mode: str | None = None):
        super().__init__(render_mode)
        self.step_index = 1

    def _new_episode(self) -> None:
        self.step_index = 1

    def _transition(self, action: int) -> tuple[float, bool, bool]:
        reward = 1.0 if self.step_index == 2 else 0.0
        self.step_index += 1
        return reward, self.step_index > 2, False

    def _draw(self) -> np.ndarray:
        return _fill({1: "green", 2: "yellow"}.get(self.step_index, "black"))

    def _info(self) -> dict:
        return {"step": self.step_index}


class ProbeAdapter(EnvAdapter):
    """Prompts and experts of the three probes (short prompts: tiny models have short contexts)."""

    legal_actions = list(PROBE_ACTIONS)

    def _kind(self) -> str:
        return self.env_id.split("/")[1].split("-")[0]

    def task_text(self, info: dict) -> str:
        return {
            "Constant": "A test: any action is rewarded.",
            "Color": 'The image is red or blue. Answer "left" if it is red, "right" if it is blue.',
            "TwoStep": "A test: the reward comes after two steps, whatever you answer.",
        }[self._kind()]

    def expert(self, env: gym.Env, info: dict) -> ExpertAction:
        if self._kind() == "Color":
            return ExpertAction(info["correct_index"], f"the image is {info['color']}")
        return ExpertAction(0, "any action is right")

    def is_solved(self, total_reward: float, info: dict) -> bool:
        if self._kind() == "Color":  # every step answered right
            return total_reward >= info.get("steps", 1)
        return True  # Constant and TwoStep have no goal to miss

    def expert_score(self, info_before, action_index, info_after, reward):
        kind = self._kind()
        if kind == "Color":
            if action_index == info_before["correct_index"]:
                return 10, f"{self.legal_actions[action_index]} is right for {info_before['color']}"
            return 0, f"{self.legal_actions[action_index]} is wrong for {info_before['color']}"
        if kind == "TwoStep" and info_before["step"] == 1:
            return 8, "the first of two steps: progress"
        return 10, "this step ends the episode with its reward"
