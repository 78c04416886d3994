"""Tasks that users bring: how an ``env.id`` outside the built-ins becomes an env and an adapter.

``env.id`` may name, besides the built-in ids (``vlmppo.envs.registry``):

* an entry point of the ``vlmppo.tasks`` group of an installed package (``tinynav/Corridor-v0``), whose
  value is a ``Task``, a gymnasium ``Env`` class or a function returning an env;
* ``module:Name``: ``Name`` in ``module`` (a ``Task``, an env class or factory), or, as in
  ``gymnasium.make``, a gymnasium id that importing ``module`` registers (``mypkg.envs:Maze-v0``);
* any id in gymnasium's registry (``CartPole-v1``).

The adapter is ``env.adapter`` (``module:Class``), else the ``Task``'s, else ``DiscreteAdapter`` (named
actions, no code). Everything that goes wrong in user code (an import, a missing method, a wrong return
type) is one ``PluginError`` naming the plugin.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

import gymnasium as gym

from vlmppo.envs.adapter import EnvAdapter
from vlmppo.envs.task import DiscreteAdapter, TaskAdapter, TaskEnv, plugin_name
from vlmppo.errors import EnvError, PluginError

GROUP = "vlmppo.tasks"
_INSTALL_HINT = (
    "Is its package installed in this Python environment (pip install -e DIR), or its folder on PYTHONPATH?"
)


@dataclass(frozen=True)
class Task:
    """What a package registers under the ``vlmppo.tasks`` entry-point group.

    Attributes:
        env: The env: ``"module:Class"``, a gymnasium id, or a callable returning an env (an ``Env`` class).
        adapter: ``"module:Class"`` or the class of its ``TaskAdapter``; None for ``DiscreteAdapter``.
        max_episode_steps: The time limit when the config sets none (None: the env's own).
        kwargs: Constructor options, under the config's ``env.kwargs``.
        description: One line for ``vlmppo env list``.
    """

    env: str | Callable[..., gym.Env]
    adapter: str | type | None = None
    max_episode_steps: int | None = None
    kwargs: dict = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class ResolvedTask:
    """An ``env.id`` resolved to code: ``name`` says where it came from (for messages)."""

    env_id: str
    name: str
    task: Task


def task_entry_points() -> dict[str, EntryPoint]:
    """The installed ``vlmppo.tasks`` entry points by name (the ``env.id`` each registers)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load_object(spec: str, what: str):
    """The object ``module:attr.path`` names, imported now; a PluginError that says which part failed."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise PluginError(
            f"{what} {spec!r} is not of the form module:Name (e.g. mypkg.adapters:MazeAdapter)."
        )
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise PluginError(
            f"{what} {spec!r}: cannot import {module_name!r} ({err}).", hint=_INSTALL_HINT
        ) from err
    except Exception as err:  # user code failing at import time: show what it raised, not our traceback
        raise PluginError(
            f"{what} {spec!r}: importing {module_name!r} raised {type(err).__name__}: {err}"
        ) from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            if getattr(obj, "__name__", None) == module_name and attr in gym.registry:
                return attr  # "module:Id-v0": importing the module registered the gymnasium id
            raise PluginError(
                f"{what} {spec!r}: {module_name!r} has no {attr!r} (and no gymnasium id {attr!r})."
            )
        obj = getattr(obj, part)
    return obj


def resolve_task(env_id: str) -> ResolvedTask | None:
    """The plugin ``env_id`` names, or None when it names none (an unknown id)."""
    points = task_entry_points()
    if env_id in points:
        point = points[env_id]
        where = f"plugin {env_id!r} (entry point {point.value!r} of {point.dist.name if point.dist else '?'})"
        try:
            obj = point.load()
        except Exception as err:
            raise PluginError(
                f"{where}: loading it raised {type(err).__name__}: {err}", hint=_INSTALL_HINT
            ) from err
        return ResolvedTask(env_id, where, _as_task(obj, where))
    if ":" in env_id:
        where = f"plugin {env_id!r}"
        return ResolvedTask(env_id, where, _as_task(load_object(env_id, "env.id"), where))
    if env_id in gym.registry:
        return ResolvedTask(env_id, f"gymnasium env {env_id!r}", Task(env=env_id))
    return None


def _as_task(obj, where: str) -> Task:
    if isinstance(obj, Task):
        return obj
    if isinstance(obj, str) or callable(obj):
        return Task(env=obj)
    raise PluginError(f"{where} is a {type(obj).__name__}; it must be a vlmppo.envs.Task, an env class or "
                      "a function returning an env.")  # fmt: skip


def _construct(factory: Callable[..., gym.Env], kwargs: dict, where: str) -> gym.Env:
    try:
        params = inspect.signature(factory).parameters.values()
        takes_render_mode = any(p.name == "render_mode" or p.kind is p.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):
        takes_render_mode = False
    try:
        env = factory(**({"render_mode": "rgb_array"} if takes_render_mode else {}), **kwargs)
    except TypeError as err:
        raise EnvError(f"Cannot build {where} with options {kwargs}: {err}") from err
    if not isinstance(env, gym.Env):
        raise PluginError(f"{where}: {getattr(factory, '__qualname__', factory)!r} returned a "
                          f"{type(env).__name__}, not a gymnasium.Env.")  # fmt: skip
    return env


def make_raw_env(resolved: ResolvedTask, max_episode_steps: int | None, kwargs: dict) -> gym.Env:
    """The plugin's own env (no TaskEnv), with the config's time limit (else the task's) and options."""
    task = resolved.task
    options = {**task.kwargs, **kwargs}
    limit = max_episode_steps or task.max_episode_steps
    spec = task.env
    if isinstance(spec, str) and spec not in gym.registry:
        spec = load_object(spec, f"the env of {resolved.name}")  # a class, or an id its import registered
    if isinstance(spec, str):
        try:
            return gym.make(spec, render_mode="rgb_array", max_episode_steps=limit, **options)
        except gym.error.Error as err:
            raise EnvError(f"Cannot build {resolved.name}: {err}") from err
        except TypeError as err:
            raise EnvError(f"Cannot build {resolved.name} with options {options}: {err}") from err
    env = _construct(spec, options, resolved.name)
    return gym.wrappers.TimeLimit(env, max_episode_steps=limit) if limit else env


def make_task_adapter(
    resolved: ResolvedTask,
    prompt: str,
    adapter: str | None,
    adapter_kwargs: dict,
    make_env: Callable[[], gym.Env],
) -> EnvAdapter:
    """The adapter of a plugin: ``adapter`` (``env.adapter``), else the task's, else ``DiscreteAdapter``.

    Args:
        make_env: Builds one raw env, for ``DiscreteAdapter``'s action names (closed again at once).
    """
    spec = adapter or resolved.task.adapter
    where = f"env.adapter {spec!r}" if adapter else f"the adapter of {resolved.name}"
    cls = load_object(spec, where) if isinstance(spec, str) else (spec or DiscreteAdapter)
    if not (isinstance(cls, type) and issubclass(cls, EnvAdapter)):
        raise PluginError(f"{where} is {cls!r}; it must be a subclass of vlmppo.envs.TaskAdapter.")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise PluginError(
            f"The adapter {plugin_name(cls)} of {resolved.name} does not define {', '.join(missing)}.",
            hint="A TaskAdapter needs legal_actions and task_text(self, info) -> str (see docs/custom-envs.md).",
        )
    try:
        if issubclass(cls, DiscreteAdapter):
            env = make_env()
            try:
                instance = cls(resolved.env_id, prompt, env=env, **adapter_kwargs)
            finally:
                env.close()
        elif issubclass(cls, TaskAdapter):
            instance = cls(resolved.env_id, prompt, **adapter_kwargs)
        else:
            instance = cls(resolved.env_id, prompt)
    except TypeError as err:
        raise PluginError(f"Cannot build the adapter {plugin_name(cls)} with env.adapter_kwargs "
                          f"{adapter_kwargs}: {err}") from err  # fmt: skip
    _check_actions(instance)
    return instance


def _check_actions(adapter: EnvAdapter) -> None:
    actions = getattr(adapter, "legal_actions", None)
    if (
        not isinstance(actions, (list, tuple))
        or not actions
        or not all(isinstance(a, str) and a.strip() for a in actions)
        or len(set(actions)) != len(actions)
    ):
        raise PluginError(
            f"The adapter {plugin_name(adapter)} has legal_actions={actions!r}; it must be a non-empty list of "
            "distinct, non-empty strings (the answers the model may write)."
        )
    adapter.legal_actions = list(actions)


def wrap(env: gym.Env, adapter: EnvAdapter) -> gym.Env:
    """The env the stages play: TaskEnv when the adapter is a TaskAdapter (frames, shaping, checks)."""
    return TaskEnv(env, adapter) if isinstance(adapter, TaskAdapter) else env
