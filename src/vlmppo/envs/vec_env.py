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

    Attributes:
        envs: The underlying envs (from ``make_env``).
        adapter: The shared ``EnvAdapter`` (legal actions, prompt, parser, expert).
        n_envs: Number of envs.
        rngs: One generator per env for the parser's random fallback actions. Seeded from ``seed + i``
            but separate from the env's own RNG, so an unparseable answer does not change the next deal.
    """

    def __init__(self, env_id: str, n_envs: int, seed: int, prompt: str = "cot", **make_env_kwargs):
        if n_envs < 1:
            raise ValueError("n_envs must be at least 1")
        self.env_id, self.n_envs, self.seed = env_id, n_envs, seed
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

    @property
    def observation_space(self):
        return self.envs[0].observation_space

    @property
    def n_actions(self) -> int:
        """Number of legal actions (what ``step`` takes indices into)."""
        return len(self.adapter.legal_actions)

    def reset(self) -> tuple[list[np.ndarray], list[dict]]:
        """Resets every env (seeded ``seed + i`` the first time).

        Returns:
            obs: ``n_envs`` frames, each ``[H, W, 3] uint8``.
            infos: ``n_envs`` info dicts.
        """
        obs, infos = [], []
        for i, env in enumerate(self.envs):
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
            o, r, term, trunc, info = env.step(self.adapter.to_env_action(int(action)))
            rewards[i], terminated[i], truncated[i] = r, term, trunc
            self._returns[i] += r
            self._lengths[i] += 1
            if term or trunc:
                total = float(self._returns[i])
                episode = {
                    "return": total,
                    "length": int(self._lengths[i]),
                    "success": is_success(total),
                    "solved": bool(self.adapter.is_solved(total, info)),
                }
                final_obs, final_info = o, info
                o, info = env.reset()
                info = {**info, "final_obs": final_obs, "final_info": final_info, "episode": episode}
                self._returns[i], self._lengths[i] = 0.0, 0
            obs.append(o)
            infos.append(info)
        return obs, rewards, terminated, truncated, infos

    def close(self) -> None:
        for env in self.envs:
            env.close()


def make_vec_env(env_id: str, n_envs: int, seed: int, prompt: str = "cot", **make_env_kwargs) -> VecEnv:
    """``n_envs`` envs of ``env_id`` stepped together; see ``VecEnv`` for seeding and auto-reset.

    Args:
        env_id: Any id ``make_env`` accepts.
        n_envs: Number of envs.
        seed: Env i is seeded ``seed + i`` on the first reset.
        prompt: The adapter's prompt style (``env.prompt``; see ``get_adapter``).
        **make_env_kwargs: Passed to ``make_env`` for every env.
    """
    return VecEnv(env_id, n_envs, seed, prompt, **make_env_kwargs)


def make_vec_env_from_config(env: EnvConfig, n_envs: int, seed: int) -> VecEnv:
    """``n_envs`` envs as a config's ``env:`` section describes them (``env.n_envs`` is the caller's to pass:
    the benchmark runs other counts), env i seeded ``seed + i``. See ``make_vec_env``."""
    return make_vec_env(
        env.id,
        n_envs,
        seed,
        prompt=env.prompt,
        max_episode_steps=env.max_episode_steps,
        observation=env.observation,
        tile_size=env.tile_size,
        adapter=env.adapter,
        adapter_kwargs=env.adapter_kwargs,
        **env.kwargs,
    )
