"""Many envs stepped together, so that one batched ``generate`` serves all of them.

A plain synchronous loop: a step of these envs costs microseconds to a millisecond, next to the VLM's
hundreds of milliseconds, so subprocess workers would only add pickling of frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vlmppo.envs.adapter import is_success
from vlmppo.envs.registry import get_adapter, make_env

if TYPE_CHECKING:
    from vlmppo.config.schema import EnvConfig


class VecEnv:
    """``n_envs`` copies of one env, stepped in lockstep, with automatic reset.

    Seeding: on the first ``reset()`` env i is reset with ``seed + i``; later resets (explicit or
    automatic) pass no seed, so each env continues its own random stream and a run is reproducible from
    ``seed`` alone.

    Auto-reset: when env i terminates or truncates during ``step``, it is reset at once. The returned
    ``obs[i]`` is then the first frame of the *new* episode and ``infos[i]`` its reset info, plus:

    * ``final_obs``: the last frame of the finished episode,
    * ``final_info``: the info of its last step,
    * ``episode``: ``{"return": float, "length": int, "success": bool, "solved": bool}``: success is
      RL4VLM's (return > 0), solved the task's own goal (``adapter.is_solved``).

    ``rewards[i]``, ``terminated[i]`` and ``truncated[i]`` belong to the finished episode's last step,
    so GAE can tell a time limit (bootstrap from ``final_obs``) from a true end (no bootstrap).

    Grouped resets (``group_size=G``, for GRPO/GiGPO): envs ``[g·G, (g+1)·G)`` form group ``g``, and play
    their episodes in rounds: every member of a group starts round ``k`` from the same seed,
    ``group_seed(seed, g, k)`` (a hash: distinct across groups and rounds, so across updates). A member whose
    episode ends waits (``info["group_wait"]``: its last frame again, reward 0, its action ignored) until
    the whole group has finished the round; then all start the next round together. ``reset()`` starts a
    new round for every group (the trainer calls it at each rollout's start, so no round straddles two
    rollouts). The round counters live on this object, which a checkpoint pickles: a resume continues them.

    Attributes:
        envs: The underlying envs (from ``make_env``).
        adapter: The shared ``EnvAdapter`` (legal actions, prompt, parser, expert).
        n_envs: Number of envs.
        rngs: One generator per env for the parser's random fallback actions. Seeded from ``seed + i``
            but separate from the env's own RNG, so an unparseable answer does not change the next deal.
        group_size: ``G`` with grouped resets, else None.
        group_rounds: ``[n_envs // G]`` int, the rounds each group has started.
    """

    def __init__(
        self,
        env_id: str,
        n_envs: int,
        seed: int,
        prompt: str = "cot",
        group_size: int | None = None,
        **make_env_kwargs,
    ):
        if n_envs < 1:
            raise ValueError("n_envs must be at least 1")
        if group_size is not None and (group_size < 1 or n_envs % group_size):
            raise ValueError(f"group_size {group_size} does not divide n_envs {n_envs}")
        self.env_id, self.n_envs, self.seed = env_id, n_envs, seed
        self.group_size = group_size
        self.group_rounds = np.zeros(n_envs // (group_size or 1), dtype=np.int64)
        self._waiting: dict[
            int, tuple[np.ndarray, dict]
        ] = {}  # env -> its finished episode's last frame, info
        plugin_keys = ("observation", "tile_size", "adapter", "adapter_kwargs")
        self.adapter = get_adapter(
            env_id, make_env_kwargs.get("observation", "full"), prompt,
            adapter=make_env_kwargs.get("adapter"), adapter_kwargs=make_env_kwargs.get("adapter_kwargs"),
            env_kwargs={k: v for k, v in make_env_kwargs.items() if k not in plugin_keys},
        )  # fmt: skip
        self.envs = [make_env(env_id, **make_env_kwargs) for _ in range(n_envs)]
        self.rngs = [np.random.default_rng([seed + i, 1]) for i in range(n_envs)]
        self._seeded = False
        self._returns = np.zeros(n_envs, dtype=np.float64)
        self._lengths = np.zeros(n_envs, dtype=np.int64)

    def __setstate__(self, state: dict) -> None:
        # A checkpoint pickled before grouped resets existed has none of their fields.
        state.setdefault("group_size", None)
        state.setdefault("group_rounds", np.zeros(state["n_envs"], dtype=np.int64))
        state.setdefault("_waiting", {})
        self.__dict__.update(state)

    @property
    def observation_space(self):
        return self.envs[0].observation_space

    @property
    def n_actions(self) -> int:
        """Number of legal actions (what ``step`` takes indices into)."""
        return len(self.adapter.legal_actions)

    def reset(self) -> tuple[list[np.ndarray], list[dict]]:
        """Resets every env (seeded ``seed + i`` the first time; with grouped resets, a new round).

        Returns:
            obs: ``n_envs`` frames, each ``[H, W, 3] uint8``.
            infos: ``n_envs`` info dicts.
        """
        obs, infos = [], []
        if self.group_size is not None:  # a new round for every group; an unfinished one is abandoned
            self._waiting.clear()
            obs, infos = self._start_round(range(len(self.group_rounds)))
        for i, env in enumerate(self.envs if self.group_size is None else []):
            o, info = env.reset(seed=None if self._seeded else self.seed + i)
            obs.append(o)
            infos.append(info)
        self._seeded = True
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return obs, infos

    def step(self, actions: list[int]):
        """Steps env i with the legal action ``adapter.legal_actions[actions[i]]``.

        Actions are indices into ``adapter.legal_actions`` (what the parser returns); the mapping to the
        env's own action id (``adapter.to_env_action``) happens here, so callers never map them again.

        Returns:
            obs: ``n_envs`` frames ``[H, W, 3] uint8`` (a new episode's first frame where one ended).
            rewards: ``[n_envs] float64``.
            terminated: ``[n_envs] bool``.
            truncated: ``[n_envs] bool``.
            infos: ``n_envs`` dicts; see the class docstring for the keys added on episode end.
        """
        if not self._seeded:
            raise RuntimeError("call reset() before step()")
        if len(actions) != self.n_envs:
            raise ValueError(f"expected {self.n_envs} actions, got {len(actions)}")
        n_legal = len(self.adapter.legal_actions)
        if any(not 0 <= int(a) < n_legal for a in actions):
            # Most often an env action id passed where a legal-action index was expected.
            raise ValueError(f"actions must be indices into the {n_legal} legal actions, got {list(actions)}")
        obs, infos = [], []
        rewards = np.zeros(self.n_envs, dtype=np.float64)
        terminated = np.zeros(self.n_envs, dtype=bool)
        truncated = np.zeros(self.n_envs, dtype=bool)
        for i, (env, action) in enumerate(zip(self.envs, actions, strict=True)):
            if i in self._waiting:  # its group is still playing this round: nothing happens to it
                frame, final_info = self._waiting[i]
                obs.append(frame)
                infos.append({**final_info, "group_wait": True})
                continue
            o, r, term, trunc, info = env.step(self.adapter.to_env_action(int(action)))
            rewards[i], terminated[i], truncated[i] = r, term, trunc
            self._returns[i] += r
            self._lengths[i] += 1
            if term or trunc:
                o, info = self._episode_ended(i, o, info)
            obs.append(o)
            infos.append(info)
        if self.group_size is not None:
            self._next_rounds(obs, infos)
        return obs, rewards, terminated, truncated, infos

    def _episode_ended(self, i: int, final_obs: np.ndarray, final_info: dict) -> tuple[np.ndarray, dict]:
        """Env i's episode just ended: the next frame and info (a new episode's, or with grouped resets its
        last frame again while it waits for its group), with ``final_obs``, ``final_info``, ``episode``."""
        total = float(self._returns[i])
        episode = {
            "return": total,
            "length": int(self._lengths[i]),
            "success": is_success(total),
            "solved": bool(self.adapter.is_solved(total, final_info)),
        }
        self._returns[i], self._lengths[i] = 0.0, 0
        ended = {"final_obs": final_obs, "final_info": final_info, "episode": episode}
        if self.group_size is not None:
            self._waiting[i] = (final_obs, final_info)
            return final_obs, {**final_info, **ended, "group_wait": True}
        o, info = self.envs[i].reset()
        return o, {**info, **ended}

    def _next_rounds(self, obs: list, infos: list[dict]) -> None:
        """Start the next round of every group whose members have all finished this one (in place)."""
        done = [g for g in range(len(self.group_rounds)) if all(i in self._waiting for i in self.members(g))]
        if not done:
            return
        for i in (i for g in done for i in self.members(g)):
            del self._waiting[i]
        new_obs, new_infos = self._start_round(done)
        for k, i in enumerate(i for g in done for i in self.members(g)):
            ended = {key: infos[i][key] for key in ("final_obs", "final_info", "episode") if key in infos[i]}
            obs[i], infos[i] = new_obs[k], {**new_infos[k], **ended}

    def members(self, group: int) -> range:
        """The envs of ``group`` (grouped resets)."""
        return range(group * self.group_size, (group + 1) * self.group_size)

    def _start_round(self, groups) -> tuple[list[np.ndarray], list[dict]]:
        """Reset every member of ``groups`` with its group's seed for its next round; frames and infos in
        the order of the groups' members."""
        obs, infos = [], []
        for g in groups:
            seed = group_seed(self.seed, g, int(self.group_rounds[g]))
            self.group_rounds[g] += 1
            for i in self.members(g):
                o, info = self.envs[i].reset(seed=seed)
                obs.append(o)
                infos.append(info)
        return obs, infos

    def close(self) -> None:
        for env in self.envs:
            env.close()


def group_seed(seed: int, group: int, round_: int) -> int:
    """The reset seed of round ``round_`` of group ``group``: a 32-bit hash of all three, so groups and rounds
    differ (and training almost never replays the small seeds eval uses)."""
    return int(np.random.SeedSequence(entropy=seed, spawn_key=(group, round_)).generate_state(1)[0])


def make_vec_env(
    env_id: str, n_envs: int, seed: int, prompt: str = "cot", group_size: int | None = None, **make_env_kwargs
) -> VecEnv:
    """``n_envs`` envs of ``env_id`` stepped together; see ``VecEnv`` for seeding and auto-reset.

    Args:
        env_id: Any id ``make_env`` accepts.
        n_envs: Number of envs.
        seed: Env i is seeded ``seed + i`` on the first reset.
        prompt: The adapter's prompt style (``env.prompt``; see ``get_adapter``).
        group_size: Grouped resets in groups of this many envs (GRPO/GiGPO), or None.
        **make_env_kwargs: Passed to ``make_env`` for every env.
    """
    return VecEnv(env_id, n_envs, seed, prompt, group_size, **make_env_kwargs)


def make_vec_env_from_config(env: EnvConfig, n_envs: int, seed: int, group_size: int | None = None) -> VecEnv:
    """``n_envs`` envs as a config's ``env:`` section describes them (``env.n_envs`` is the caller's to pass:
    the benchmark runs other counts), env i seeded ``seed + i`` (or grouped resets: ``group_size``). See
    ``make_vec_env``."""
    return make_vec_env(
        env.id,
        n_envs,
        seed,
        prompt=env.prompt,
        group_size=group_size,
        max_episode_steps=env.max_episode_steps,
        observation=env.observation,
        tile_size=env.tile_size,
        adapter=env.adapter,
        adapter_kwargs=env.adapter_kwargs,
        **env.kwargs,
    )
