"""Per-env windows of the last K turns (``env.history``): what each env's next prompt shows of its episode.

A turn is the frame an env's prompt showed and the answer the model gave to it (``models.inputs.Turn``).
After each batched step, every env's window takes that step's turn, unless the step ended the env's episode:
the vector env has then already reset it (auto-reset), its next observation is a new episode's first frame,
and its window starts empty. The turns of a finished episode never reach the next one's prompts.

The windows are part of a PPO run's state: a checkpoint saves them (``state``) and a resume restores them
(``from_state``), so a resumed run's next prompts are those the uninterrupted run would have built.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from vlmppo.models.inputs import Turn


def episode_history(frames: Sequence, answers: Sequence[str | None], size: int) -> tuple[Turn, ...]:
    """The last ``size`` turns of an episode recorded as its frames and answers (``frames[i]`` the frame step
    ``i`` acted on, ``answers[i]`` the answer of that step; frames may run one longer, to the next step's).
    What the prompt of step ``len(answers)`` shows with ``env.history = size``."""
    steps = len(answers)
    first = max(0, steps - size)
    return tuple(Turn(frames[i], answers[i] or "") for i in range(first, steps))


class HistoryWindows:
    """The last ``size`` turns of each of ``n_envs`` envs' current episodes (oldest first).

    Args:
        n_envs: Envs stepped together.
        size: ``K`` (``env.history``); 0 keeps no turns (every history is empty).
    """

    def __init__(self, n_envs: int, size: int):
        if size < 0:
            raise ValueError(f"a history window holds 0 or more turns, not {size}")
        self.size = size
        self.windows: list[deque[Turn]] = [deque(maxlen=size) for _ in range(n_envs)]

    @property
    def n_envs(self) -> int:
        return len(self.windows)

    def histories(self) -> list[tuple[Turn, ...]]:
        """Each env's turns now (tuples: later steps do not change them), oldest first."""
        return [tuple(window) for window in self.windows]

    def advance(
        self, frames: Sequence[np.ndarray], answers: Sequence[str], done: Sequence[bool]
    ) -> list[tuple[Turn, ...]]:
        """Record one batched step: env ``i`` showed ``frames[i]`` and got ``answers[i]``; ``done[i]``: that
        step ended its episode (terminated or truncated).

        Returns:
            Each env's turns as they stand after this step, before the windows of ended episodes are
            emptied: the history of the observation that follows the step, which for an ended episode is
            its final observation (``info["final_obs"]``, whose value bootstraps a truncation).
        """
        if not len(frames) == len(answers) == len(done) == self.n_envs:
            raise ValueError(
                f"a step of {self.n_envs} envs needs {self.n_envs} frames, answers and done flags; got "
                f"{len(frames)}, {len(answers)}, {len(done)}"
            )
        after = []
        for window, frame, answer, ended in zip(self.windows, frames, answers, done, strict=True):
            window.append(Turn(frame, answer))
            after.append(tuple(window))
            if ended:
                window.clear()
        return after

    def state(self) -> list[list[tuple[np.ndarray, str]]]:
        """Plain data for a checkpoint: per env, its ``(frame, answer)`` pairs."""
        return [[(np.asarray(turn.frame), turn.answer) for turn in window] for window in self.windows]

    @classmethod
    def from_state(cls, state: list[list[tuple[np.ndarray, str]]], size: int) -> HistoryWindows:
        """The windows ``state()`` described (a resumed run keeps its own ``size``)."""
        windows = cls(len(state), size)
        for window, turns in zip(windows.windows, state, strict=True):
            window.extend(Turn(frame, answer) for frame, answer in turns)
        return windows
