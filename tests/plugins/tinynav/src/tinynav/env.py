"""TinyNav: a plain gymnasium env that knows nothing of vlmppo."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right


class TinyNavEnv(gym.Env):
    """Walk to the goal on a small grid.

    Description: the agent (red) and the goal (green) start on different cells of a ``size`` x ``size`` grid.
    Action space: ``Discrete(4)``: 0 up, 1 down, 2 left, 3 right (a move into the wall stays put).
    Observation: the agent's and the goal's cells, ``[4] int64`` (row, col, row, col); ``render()`` draws
        the ``[14 * size, 14 * size, 3] uint8`` picture.
    Reward: 1 on reaching the goal, else 0.
    Termination: the agent reaches the goal; the time limit is the caller's (``TimeLimit``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    cell = 14

    def __init__(self, size: int = 4, render_mode: str | None = None):
        self.size, self.render_mode = size, render_mode
        self.action_space = spaces.Discrete(4)
        self.observation_space = spaces.Box(0, size - 1, shape=(4,), dtype=np.int64)

    def _obs(self):
        return np.array([*self.agent, *self.goal], dtype=np.int64)

    def _info(self) -> dict:
        return {"agent": list(self.agent), "goal": list(self.goal), "size": self.size}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        cells = self.np_random.choice(self.size * self.size, size=2, replace=False)
        self.agent, self.goal = (divmod(int(c), self.size) for c in cells)
        return self._obs(), self._info()

    def step(self, action):
        dr, dc = MOVES[int(action)]
        row = min(max(self.agent[0] + dr, 0), self.size - 1)
        col = min(max(self.agent[1] + dc, 0), self.size - 1)
        self.agent = (row, col)
        reached = self.agent == self.goal
        return self._obs(), float(reached), reached, False, self._info()

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        frame = np.full((self.size * self.cell, self.size * self.cell, 3), 235, dtype=np.uint8)
        frame[:: self.cell, :] = frame[:, :: self.cell] = 160  # grid lines
        for (row, col), colour in ((self.goal, (40, 170, 60)), (self.agent, (210, 40, 40))):
            top, left = row * self.cell + 2, col * self.cell + 2
            frame[top : top + self.cell - 3, left : left + self.cell - 3] = colour
        return frame
