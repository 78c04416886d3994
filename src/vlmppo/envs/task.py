"""The adapter protocol for tasks that users bring: ``TaskAdapter``, the no-code ``DiscreteAdapter``, and
``TaskEnv``, the wrapper that turns any gymnasium env into one the stages can play.

A task plugin is a gymnasium env plus a ``TaskAdapter`` subclass. The built-in tasks use the same
``EnvAdapter`` interface (``vlmppo.envs.adapter``); ``TaskAdapter`` gives every method a sensible default
but ``task_text``, so a plugin writes only what its task needs:

* ``legal_actions`` (required): the action strings the model writes; index i steps the env with
  ``to_env_action(i)`` (identity by default).
* ``task_text(info)`` (required): what the picture shows and what to do. The answer format and the legal
  actions are added by ``prompt``, so SFT targets, PPO's parser and eval agree.
* ``frame(env, obs, info)``: the ``[H, W, 3] uint8`` picture the VLM sees; default: the observation when it
  is such a frame, else ``env.render()``.
* ``expert(env, info)``: the expert's action (an ``ExpertAction``, an index or an action string); default: none.
* ``reward(reward, info_before, info_after)``: reward shaping; default: the env's reward.
* ``is_solved(total_reward, info)``: the task's own success; default: a positive return.

The methods a subclass defines are wrapped when the class is created (``__init_subclass__``), so a wrong
return type surfaces as one ``PluginError`` naming ``module:Class.method`` and what it returned, wherever
the stages call it.
"""

from __future__ import annotations

import functools
import inspect

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlmppo.envs.adapter import EnvAdapter
from vlmppo.envs.parsing import ExpertAction
from vlmppo.errors import PluginError


def plugin_name(obj) -> str:
    """``module:Qualname`` of a class or of an instance's class: how messages name a plugin."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def as_frame(value, where: str) -> np.ndarray:
    """``value`` as an ``[H, W, 3] uint8`` RGB frame, or a PluginError naming ``where`` and what it was."""
    if isinstance(value, np.ndarray) and value.ndim == 3 and value.shape[2] == 3 and value.dtype == np.uint8:
        return value
    got = (
        f"an array of shape {value.shape} and dtype {value.dtype}"
        if isinstance(value, np.ndarray)
        else type(value).__name__
    )
    raise PluginError(
        f"{where} returned {got}, not the [H, W, 3] uint8 RGB frame the model sees.",
        hint="Build the env with render_mode='rgb_array' (vlmppo does for a class that takes it), or "
        "override TaskAdapter.frame(env, obs, info) to draw the frame.",
    )


def _expect(kind: type | tuple[type, ...], label: str):
    def check(value, where: str):
        if not isinstance(value, kind):
            raise PluginError(
                f"{where} returned {type(value).__name__} {value!r:.80}; it must return {label}."
            )
        return value

    return check


def _check_expert(value, where: str, adapter: EnvAdapter) -> ExpertAction:
    if isinstance(value, ExpertAction):
        return value
    if isinstance(value, str) and value in adapter.legal_actions:
        return ExpertAction(adapter.legal_actions.index(value), "")
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if 0 <= int(value) < len(adapter.legal_actions):
            return ExpertAction(int(value), "")
    if value is None:
        return ExpertAction(None, "no expert action for this state")
    raise PluginError(
        f"{where} returned {value!r:.80}; it must return an ExpertAction, an index into legal_actions "
        f"(0-{len(adapter.legal_actions) - 1}), one of the legal action strings {adapter.legal_actions}, or None."
    )


_CHECKS = {
    "task_text": _expect(str, "a str (the task, no answer format)"),
    "reward": _expect((int, float, np.floating, np.integer), "a number (the shaped reward)"),
    "is_solved": _expect((bool, np.bool_), "a bool"),
    "to_env_action": _expect((int, np.integer), "the env's action (an int)"),
}


def _checked(cls: type, name: str, method):
    where = f"{plugin_name(cls)}.{name}"

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        value = method(self, *args, **kwargs)
        if name == "frame":
            return as_frame(value, where)
        if name == "expert":
            return _check_expert(value, where, self)
        return _CHECKS[name](value, where)

    wrapper.__vlmppo_checked__ = True
    return wrapper


class TaskAdapter(EnvAdapter):
    """Base of a user task's adapter: set ``legal_actions``, write ``task_text``; override the rest as needed.

    Args:
        env_id: The ``env.id`` it serves.
        prompt: ``cot`` (thoughts, then the action) or ``action_only``.
        **options: ``env.adapter_kwargs`` from the config, kept as ``self.options``.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("task_text", "frame", "expert", "reward", "is_solved", "to_env_action"):
            method = cls.__dict__.get(name)
            if inspect.isfunction(method) and not getattr(method, "__vlmppo_checked__", False):
                setattr(cls, name, _checked(cls, name, method))

    def __init__(self, env_id: str, prompt: str = "cot", **options):
        super().__init__(env_id, prompt)
        self.options = options

    def frame(self, env: gym.Env, obs, info: dict) -> np.ndarray:
        """The picture the VLM sees, ``[H, W, 3] uint8``: ``obs`` when it is one, else ``env.render()``."""
        if isinstance(obs, np.ndarray) and obs.ndim == 3 and obs.shape[2] == 3 and obs.dtype == np.uint8:
            return obs
        return as_frame(env.render(), f"{plugin_name(env.unwrapped)}.render()")

    def expert(self, env: gym.Env | None, info: dict) -> ExpertAction:
        """No expert by default: ``collect`` with ``policy: expert`` then plays random legal actions."""
        return ExpertAction(None, f"{plugin_name(self)} has no expert")

    def reward(self, reward: float, info_before: dict, info_after: dict) -> float:
        """The reward PPO and eval see for one step (shaping); default: the env's own."""
        return float(reward)

    def is_solved(self, total_reward: float, info: dict) -> bool:
        """Whether a finished episode reached the goal; default: its (shaped) return is positive."""
        return total_reward > 0

    def expert_score(self, info_before: dict, action_index: int, info_after: dict, reward: float):
        """The ``score`` labeller's 0-10 rating; default: 10 for a positive reward, 0 for a negative, else 2."""
        if reward > 0:
            return 10, "the step earned a reward"
        if reward < 0:
            return 0, "the step was penalised"
        return 2, "the step earned nothing"


class DiscreteAdapter(TaskAdapter):
    """The no-code adapter of an env with a ``Discrete`` action space and named actions.

    Action names come from ``env.adapter_kwargs.actions`` (a list) or the env's ``action_names`` attribute
    (or ``metadata["action_names"]``); the task text from ``env.adapter_kwargs.task`` or the env's
    ``task_description`` attribute (or ``metadata["task"]``). ``legal_actions[i]`` steps action
    ``space.start + i``.

    Args:
        env_id: The ``env.id``.
        prompt: The prompt style.
        env: One env of the task, read for its action space and names (closed by the caller).
        actions: The action names, in action-id order.
        task: What the picture shows and what to do.
    """

    def __init__(self, env_id: str, prompt: str = "cot", *, env: gym.Env, actions=None, task=None, **options):
        super().__init__(env_id, prompt, **options)
        space, inner = env.action_space, env.unwrapped
        if not isinstance(space, spaces.Discrete):
            raise PluginError(
                f"{env_id!r} has the action space {space}; the default adapter needs a Discrete one.",
                hint="Write a TaskAdapter for it and name it in env.adapter (see docs/custom-envs.md).",
            )
        names = actions or getattr(inner, "action_names", None) or inner.metadata.get("action_names")
        if not names or len(names) != int(space.n) or not all(isinstance(a, str) and a for a in names):
            raise PluginError(
                f"{env_id!r} has {int(space.n)} actions, and the default adapter needs one name for each; "
                f"got {names!r}.",
                hint="Set env.adapter_kwargs.actions to the list of names (e.g. [left, right]) or give the env "
                "an action_names attribute.",
            )
        self.legal_actions = [str(a) for a in names]
        self.start = int(space.start)
        self.text = (
            task
            or getattr(inner, "task_description", None)
            or inner.metadata.get("task")
            or f"The picture shows the current state of the task {env_id}. Choose the next action."
        )

    def task_text(self, info: dict) -> str:
        return str(self.text)

    def to_env_action(self, index: int) -> int:
        return self.start + index


class TaskEnv(gym.Wrapper):
    """A plugin's env as the stages play it: observations are the adapter's frames, rewards its shaped ones.

    Every reset and step checks what the env returned (an info dict, a frame), so that a broken plugin fails
    at once with its name in the message instead of deep inside a stage.
    """

    def __init__(self, env: gym.Env, adapter: TaskAdapter):
        super().__init__(env)
        self.adapter = adapter
        self._name = plugin_name(env.unwrapped)
        self._info: dict = {}

    def _frame(self, obs, info) -> np.ndarray:
        if not isinstance(info, dict):
            raise PluginError(
                f"{self._name} returned an info of type {type(info).__name__}; it must be a dict."
            )
        frame = self.adapter.frame(self.env, obs, info)
        if self.observation_space.shape != frame.shape:
            self.observation_space = spaces.Box(0, 255, shape=frame.shape, dtype=np.uint8)
        return frame

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        frame = self._frame(obs, info)
        self._info = info
        return frame, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        frame = self._frame(obs, info)
        shaped = self.adapter.reward(float(reward), self._info, info)
        self._info = info
        return frame, float(shaped), bool(terminated), bool(truncated), info
