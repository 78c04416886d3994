"""Environments: the gym-cards tasks, MiniGrid and probes, with their agent-facing adapters.

Importing this package registers ``gym_cards/*`` and ``probe/*`` with gymnasium (idempotent) and imports
``minigrid`` so ``MiniGrid-*`` ids exist. Entry points:

* ``make_env_from_config(cfg.env)``, ``adapter_from_config(cfg.env)``,
  ``make_vec_env_from_config(cfg.env, n_envs, seed)``: what the stages build from a config's ``env:``.
* ``make_env(env_id, ...)``: one env; observations are ``[H, W, 3] uint8`` RGB frames, ``info`` holds the
  symbolic state (JSON-ready); step it with ``adapter.to_env_action(i)`` for ``legal_actions[i]``.
* ``get_adapter(env_id, observation, prompt)``: prompt, legal actions, parser, expert, solved test,
  transition score, all in one prompt style (``PROMPT_STYLES``); ``is_success(return)`` is RL4VLM's success.
* ``make_vec_env(env_id, n_envs, seed)``: N envs stepped together with auto-reset.
* ``play_episodes(...)``: queued episodes played to their end on N envs (collect's and eval's loop).
* ``list_envs()`` and ``render_first_frame(...)``: what ``vlmppo env list|show`` print.
* ``TaskAdapter``, ``DiscreteAdapter``, ``Task``: what a user's task plugin subclasses or registers
  (``vlmppo.envs.plugins``, docs/custom-envs.md).
"""

from vlmppo.envs.adapter import PROMPT_STYLES, EnvAdapter, is_success
from vlmppo.envs.episodes import Episode, play_episodes
from vlmppo.envs.parsing import ExpertAction, ParsedAction, format_answer, parse_action
from vlmppo.envs.plugins import Task
from vlmppo.envs.registry import (
    adapter_from_config,
    get_adapter,
    list_envs,
    make_env,
    make_env_from_config,
    register_envs,
    render_first_frame,
    supported_ids,
)
from vlmppo.envs.task import DiscreteAdapter, TaskAdapter, TaskEnv
from vlmppo.envs.vec_env import VecEnv, make_vec_env, make_vec_env_from_config

register_envs()

__all__ = [
    "PROMPT_STYLES",
    "DiscreteAdapter",
    "EnvAdapter",
    "Episode",
    "ExpertAction",
    "ParsedAction",
    "VecEnv",
    "adapter_from_config",
    "format_answer",
    "get_adapter",
    "is_success",
    "list_envs",
    "make_env",
    "make_env_from_config",
    "make_vec_env",
    "make_vec_env_from_config",
    "parse_action",
    "play_episodes",
    "register_envs",
    "render_first_frame",
    "supported_ids",
    "Task",
    "TaskAdapter",
    "TaskEnv",
]
