"""Whole episodes played on a few envs at once: the one episode loop of ``collect`` and ``eval``.

The queued episodes (anything that names one: an episode number, an (index, seed, k) triple) are played
on ``n_envs`` envs. An env takes the next queued episode as soon as its own ends, so every queued episode
runs to its end (no bias toward short episodes, which a "first N to finish" count would have) and the envs
stay busy. At each step the caller decides for all running episodes at once (one batched ``generate``),
then each env steps; the running episodes are always listed in the order of their envs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

K = TypeVar("K")  # what names a queued episode
N = TypeVar("N")  # the caller's note on one decision, handed from ``decide`` to ``record``


def jsonable(value):
    """The JSON-safe part of an env's info: numbers, strings, lists, dicts; numpy turned into Python."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items() if not str(k).startswith("final_")}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass
class Episode(Generic[K]):
    """One queued episode while an env plays it.

    Attributes:
        key: What the queue held for it.
        env: The env playing it.
        obs: ``[H, W, 3] uint8``: the frame the next action sees.
        info: The env's info of that frame (its state).
        rows: The caller's record of each step so far (``record``'s return values).
        frames: The first frame and the one after each step, when the caller keeps them (``begin`` sets
            ``[obs]``); None otherwise.
        total: The return so far.
        context: The caller's own per-episode state (a generator, a policy), set in ``begin``.
    """

    key: K
    env: Any
    obs: np.ndarray
    info: dict
    rows: list[dict] = field(default_factory=list)
    frames: list[np.ndarray] | None = None
    total: float = 0.0
    context: Any = None


@dataclass(frozen=True)
class Outcome:
    """What one ``env.step`` returned."""

    obs: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    info: dict


def play_episodes(
    make_env: Callable[[], Any],
    n_envs: int,
    queue: Iterable[K],
    *,
    reset_seed: Callable[[K], int],
    decide: Callable[[list[Episode[K]]], Sequence[tuple[Any, N]]],
    record: Callable[[Episode[K], N, Outcome], dict],
    begin: Callable[[Episode[K]], None] | None = None,
    end: Callable[[Episode[K], Outcome], None] | None = None,
) -> None:
    """Play every episode of ``queue`` to its end on at most ``n_envs`` envs, then close the envs.

    Args:
        make_env: Builds one env (e.g. ``lambda: make_env_from_config(cfg.env)``).
        n_envs: Envs played at once (fewer when the queue is shorter).
        queue: The episodes, in the order the envs take them.
        reset_seed: The ``env.reset`` seed of an episode.
        decide: One decision for all running episodes, in their order: for each, the action its env steps
            with (``adapter.to_env_action(index)``) and a note for ``record``.
        record: The step's record, appended to ``episode.rows``. It sees the episode as it was before the
            step (``episode.info`` is the state acted on, ``len(episode.rows)`` the step's index,
            ``episode.total`` the return before it), the decision's note and the step's outcome.
        begin: Called after each reset (to keep frames, give the episode its own generator...).
        end: Called when the episode terminates or is truncated, after its last step was recorded and
            counted in ``episode.total``.
    """
    pending = deque(queue)
    envs = [make_env() for _ in range(min(n_envs, len(pending)))]

    def start(env) -> Episode[K] | None:
        if not pending:
            return None
        key = pending.popleft()
        obs, info = env.reset(seed=reset_seed(key))
        episode = Episode(key, env, obs, info)
        if begin is not None:
            begin(episode)
        return episode

    try:
        running = [e for e in map(start, envs) if e is not None]
        while running:
            decisions = decide(running)
            for i, (episode, (action, note)) in enumerate(zip(running, decisions, strict=True)):
                obs, reward, terminated, truncated, info = episode.env.step(action)
                outcome = Outcome(obs, float(reward), bool(terminated), bool(truncated), info)
                episode.rows.append(record(episode, note, outcome))
                episode.total += outcome.reward
                episode.obs, episode.info = obs, info
                if episode.frames is not None:
                    episode.frames.append(obs)
                if terminated or truncated:
                    if end is not None:
                        end(episode, outcome)
                    running[i] = start(episode.env)
            running = [e for e in running if e is not None]
    finally:
        for env in envs:
            env.close()
