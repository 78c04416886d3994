"""A small base class for the envs we draw ourselves (cards and probes)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict

import gymnasium as gym
import numpy as np
from gymnasium import spaces

FRAMES_KEPT = 512  # drawn frames kept per env class (a 300x300 frame is 270 kB: 138 MB at most)
_drawn: dict[type, OrderedDict] = {}


class FrameEnv(gym.Env, ABC):
    """An env whose observation is an RGB frame drawn from its symbolic state.

    Subclasses implement the rules as ``_new_episode()`` (draw the start state from ``self.np_random``)
    and ``_transition(action) -> (reward, terminated, truncated)``, and the looks as ``_draw()`` (HxWx3
    uint8) and ``_info()``. ``reset``/``step`` are those plus a drawn frame; ``reset_state``/``step_state``
    run the same rules without drawing, for statistics over thousands of episodes (a frame costs
    milliseconds, a rule step microseconds). ``render()`` returns the frame the agent sees. Info values
    are plain ints, strings and lists, so collected episodes can be written as JSON as they are.

    Frames repeat (NumberLine has 30), and drawing text with Pillow costs ~0.5 ms: a subclass whose
    ``_frame_key()`` names everything ``_draw`` reads gets each distinct frame drawn once per process and
    copied afterwards (least recently used dropped beyond ``FRAMES_KEPT``); every call still returns a
    fresh array.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, height: int, width: int, render_mode: str | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, shape=(height, width, 3), dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        info = self.reset_state(seed=seed)
        return self._frame(), info

    def step(self, action):
        reward, terminated, truncated, info = self.step_state(action)
        return self._frame(), reward, terminated, truncated, info

    def reset_state(self, seed: int | None = None) -> dict:
        """``reset`` without the frame: the same start state for the same seed. Returns the info."""
        super().reset(seed=seed)
        self._new_episode()
        return self._info()

    def step_state(self, action) -> tuple[float, bool, bool, dict]:
        """``step`` without the frame. Returns (reward, terminated, truncated, info)."""
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r} for {self.action_space}")
        reward, terminated, truncated = self._transition(int(action))
        return float(reward), terminated, truncated, self._info()

    @abstractmethod
    def _new_episode(self) -> None: ...

    @abstractmethod
    def _transition(self, action: int) -> tuple[float, bool, bool]: ...

    @abstractmethod
    def _draw(self) -> np.ndarray: ...

    @abstractmethod
    def _info(self) -> dict: ...

    def _frame_key(self):
        """A hashable value of everything ``_draw`` reads, or None (the default): draw every frame."""
        return None

    def _frame(self) -> np.ndarray:
        """``_draw()``, from the class's kept frames when ``_frame_key`` names the state (a copy)."""
        key = self._frame_key()
        if key is None:
            return self._draw()
        kept = _drawn.setdefault(type(self), OrderedDict())
        frame = kept.get(key)
        if frame is None:
            frame = kept[key] = self._draw()
            frame.flags.writeable = False
            while len(kept) > FRAMES_KEPT:
                kept.popitem(last=False)
        else:
            kept.move_to_end(key)
        return frame.copy()

    def render(self) -> np.ndarray | None:
        return self._frame() if self.render_mode == "rgb_array" else None
