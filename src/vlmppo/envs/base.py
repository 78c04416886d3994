"""A small base class for the envs we draw ourselves (cards and probes)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class FrameEnv(gym.Env, ABC):
    """An env whose observation is an RGB frame drawn from its symbolic state.

    Subclasses implement ``_draw() -> np.ndarray`` (HxWx3 uint8) and ``_info() -> dict``; ``render()``
    returns the same frame the agent sees. Info values are plain ints, strings and lists, so collected
    episodes can be written as JSON as they are.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, height: int, width: int, render_mode: str | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, shape=(height, width, 3), dtype=np.uint8)

    @abstractmethod
    def _draw(self) -> np.ndarray: ...

    @abstractmethod
    def _info(self) -> dict: ...

    def render(self) -> np.ndarray | None:
        return self._draw() if self.render_mode == "rgb_array" else None
