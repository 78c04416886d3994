"""The one registry of env families: gymnasium ids, how to build each env, and its adapter.

``register_envs()`` (run on ``import vlmppo.envs``) registers our ``gym_cards/*`` and ``probe/*`` ids with
gymnasium, keeping the original gym-cards ids so existing user code keeps working, and imports
``minigrid`` so that its ``MiniGrid-*`` ids exist too.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING

import gymnasium as gym
import minigrid  # noqa: F401  (importing it registers the MiniGrid-* ids)
from PIL import Image

from vlmppo.envs.adapter import EnvAdapter
from vlmppo.envs.cards.blackjack import BlackjackAdapter
from vlmppo.envs.cards.numberline import NumberLineAdapter
from vlmppo.envs.cards.points import EZPointsEnv, Points24Env, PointsAdapter
from vlmppo.envs.minigrid import FAMILY_ACTIONS, MINIGRID_ACTIONS, MiniGridAdapter, MiniGridFrames, family_of
from vlmppo.envs.plugins import (
    ResolvedTask,
    make_raw_env,
    make_task_adapter,
    resolve_task,
    task_entry_points,
    wrap,
)
from vlmppo.envs.probes import ProbeAdapter
from vlmppo.envs.task import TaskAdapter
from vlmppo.errors import EnvError

if TYPE_CHECKING:
    from vlmppo.config.schema import EnvConfig

# id -> (entry point, max_episode_steps, adapter factory taking (id, prompt style))
OUR_ENVS = {
    "gym_cards/NumberLine-v0": ("vlmppo.envs.cards.numberline:NumberLineEnv", 300, NumberLineAdapter),
    "gym_cards/Blackjack-v0": ("vlmppo.envs.cards.blackjack:BlackjackEnv", 300, BlackjackAdapter),
    "gym_cards/EZPoints-v0": (
        "vlmppo.envs.cards.points:EZPointsEnv", 300, lambda i, p: PointsAdapter(i, EZPointsEnv, p)),
    "gym_cards/Points24-v0": (
        "vlmppo.envs.cards.points:Points24Env", 300, lambda i, p: PointsAdapter(i, Points24Env, p)),
    "probe/Constant-v0": ("vlmppo.envs.probes:ConstantEnv", 10, ProbeAdapter),
    "probe/Color-v0": ("vlmppo.envs.probes:ColorEnv", 10, ProbeAdapter),
    "probe/TwoStep-v0": ("vlmppo.envs.probes:TwoStepEnv", 10, ProbeAdapter),
}  # fmt: skip
MINIGRID_PRESETS = (
    "MiniGrid-DoorKey-6x6-v0",
    "MiniGrid-Empty-Random-6x6-v0",
    "MiniGrid-Empty-5x5-v0",
    "MiniGrid-Empty-8x8-v0",
    "MiniGrid-MultiRoom-N2-S4-v0",
)


def register_envs() -> None:
    """Registers our ids with gymnasium; calling it again does nothing."""
    for env_id, (entry_point, max_steps, _) in OUR_ENVS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_steps)


def supported_ids() -> list[str]:
    """The built-in ids: ours, then the MiniGrid ids registered by the minigrid package. ``make_env`` also
    takes plugins (``vlmppo.envs.plugins``): installed ``vlmppo.tasks`` entry points, ``module:Name`` and
    other gymnasium ids."""
    minigrid_ids = sorted(i for i in gym.registry if i.startswith("MiniGrid-"))
    return [*OUR_ENVS, *minigrid_ids]


def _is_builtin(env_id: str) -> bool:
    return env_id in OUR_ENVS or (env_id.startswith("MiniGrid-") and env_id in gym.registry)


def _plugin(env_id: str) -> ResolvedTask:
    """The plugin ``env_id`` names; EnvError with close matches when it names nothing."""
    resolved = resolve_task(env_id)
    if resolved is not None:
        return resolved
    ids = list(dict.fromkeys([*supported_ids(), *task_entry_points(), *gym.registry]))
    close = difflib.get_close_matches(env_id, ids, n=5, cutoff=0.5)
    hint = f"Did you mean: {', '.join(close)}?" if close else "See `vlmppo env list` for the ids."
    raise EnvError(f"Unknown env id {env_id!r} (not built in, not a gymnasium id, no installed plugin "
                   "registers it, and not of the form module:Name).", hint=hint)  # fmt: skip


def make_env(
    env_id: str,
    *,
    max_episode_steps: int | None = None,
    observation: str = "full",
    tile_size: int = 32,
    adapter: str | None = None,
    adapter_kwargs: dict | None = None,
    **kwargs,
) -> gym.Env:
    """Builds one env whose observations are HxWx3 uint8 RGB frames and whose ``info`` holds its state.

    Args:
        env_id: A ``gym_cards/*``, ``probe/*`` or ``MiniGrid-*`` id, or a plugin's (``vlmppo.envs.plugins``).
        max_episode_steps: Time limit; None keeps the env's own (MiniGrid: its ``max_steps``).
        observation: MiniGrid only: "full" render or the "agent_view".
        tile_size: MiniGrid only: pixels per grid cell.
        adapter: Plugins only: ``env.adapter`` (``module:Class``), whose ``frame`` and ``reward`` the env uses.
        adapter_kwargs: Plugins only: ``env.adapter_kwargs``.
        **kwargs: Passed to the env constructor (e.g. ``max_position=7``, ``solvable_only=False``).

    Returns:
        A gymnasium env. Step it with ``adapter.to_env_action(i)`` for ``adapter.legal_actions[i]``:
        the identity for cards and probes, MiniGrid's own action id for MiniGrid (whose env keeps
        MiniGrid's ``Discrete(7)``).

    Raises:
        EnvError: Unknown id (the message lists close matches) or unusable options.
        PluginError: The plugin's code cannot be imported or breaks the adapter protocol.
    """
    if not _is_builtin(env_id):
        return _make_plugin_env(env_id, max_episode_steps, observation, adapter, adapter_kwargs or {}, kwargs)
    try:
        if env_id.startswith("MiniGrid-"):
            if max_episode_steps is not None:
                kwargs["max_steps"] = int(max_episode_steps)
            env = gym.make(env_id, **kwargs)
            return MiniGridFrames(env, observation=observation, tile_size=tile_size)
        if observation != "full":
            raise EnvError(f"observation={observation!r} is only for MiniGrid envs, not {env_id!r}.")
        return gym.make(env_id, max_episode_steps=max_episode_steps, render_mode="rgb_array", **kwargs)
    except TypeError as err:  # an option the env's constructor does not take
        raise EnvError(f"Cannot build {env_id!r} with options {kwargs}: {err}") from err
    except ValueError as err:
        raise EnvError(f"Cannot build {env_id!r}: {err}") from err


def _make_plugin_env(env_id, max_episode_steps, observation, adapter, adapter_kwargs, kwargs) -> gym.Env:
    if observation != "full":
        raise EnvError(f"observation={observation!r} is only for MiniGrid envs, not {env_id!r}.")
    resolved = _plugin(env_id)
    env = make_raw_env(resolved, max_episode_steps, kwargs)
    task_adapter = make_task_adapter(
        resolved, "cot", adapter, adapter_kwargs, lambda: make_raw_env(resolved, max_episode_steps, kwargs)
    )
    return wrap(env, task_adapter)


def get_adapter(
    env_id: str,
    observation: str = "full",
    prompt: str = "cot",
    *,
    adapter: str | None = None,
    adapter_kwargs: dict | None = None,
    env_kwargs: dict | None = None,
) -> EnvAdapter:
    """The agent-facing adapter (prompt, legal actions, parser, expert, solved test) for ``env_id``.

    Args:
        env_id: Any supported id.
        observation: MiniGrid only: "full" or "agent_view" (the prompt describes what the model sees).
        prompt: The prompt style (``env.prompt``): ``cot``, ``action_only``, or for gym_cards ``rl4vlm``,
            ``rl4vlm_action_only``. Prompt, parser and answer format follow it together.
        adapter: Plugins only: ``env.adapter``, a ``module:Class`` that overrides the plugin's own adapter.
        adapter_kwargs: Plugins only: ``env.adapter_kwargs``, passed to the adapter.
        env_kwargs: Plugins only: ``env.kwargs``, for the one env the default ``DiscreteAdapter`` reads.

    Raises:
        EnvError: Unknown id, or a prompt style this env does not have.
        PluginError: The plugin's adapter cannot be imported, lacks a method, or has bad legal actions.
    """
    if not _is_builtin(env_id):
        if prompt.startswith("rl4vlm"):
            raise EnvError(f"Cannot use env.prompt={prompt!r} with {env_id!r}: it is RL4VLM's gym-cards prompt.",
                           hint="Use env.prompt=cot or env.prompt=action_only for this env.")  # fmt: skip
        resolved = _plugin(env_id)
        return make_task_adapter(
            resolved,
            prompt,
            adapter,
            adapter_kwargs or {},
            lambda: make_raw_env(resolved, None, env_kwargs or {}),
        )
    try:
        if env_id.startswith("MiniGrid-"):
            return MiniGridAdapter(env_id, observation, prompt)
        return OUR_ENVS[env_id][2](env_id, prompt)
    except ValueError as err:
        raise EnvError(f"Cannot use env.prompt={prompt!r} with {env_id!r}: {err}.",
                       hint="Use env.prompt=cot or env.prompt=action_only for this env.") from err  # fmt: skip


def make_env_from_config(env: EnvConfig) -> gym.Env:
    """One env as a config's ``env:`` section describes it (id, time limit, observation, tile size, kwargs):
    the env every stage plays. See ``make_env``."""
    return make_env(
        env.id,
        max_episode_steps=env.max_episode_steps,
        observation=env.observation,
        tile_size=env.tile_size,
        adapter=env.adapter,
        adapter_kwargs=env.adapter_kwargs,
        **env.kwargs,
    )


def adapter_from_config(env: EnvConfig) -> EnvAdapter:
    """The adapter of a config's ``env:`` section (its id, observation, prompt style, and for a plugin its
    adapter and options). See ``get_adapter``."""
    return get_adapter(
        env.id, env.observation, env.prompt,
        adapter=env.adapter, adapter_kwargs=env.adapter_kwargs, env_kwargs=env.kwargs,
    )  # fmt: skip


def list_envs(tile_size: int = 32) -> list[dict]:
    """One row per supported id: ``id``, ``family``, ``legal_actions``, ``frame_size`` (H, W, for the
    full view at ``tile_size``) and ``expert`` (whether the family has tailored prompts and an expert).
    Builds each env once without resetting it (a few ms in all)."""
    rows = []
    latest: dict[str, int] = {}
    for env_id in supported_ids():
        spec = gym.spec(env_id)
        latest[spec.name] = max(latest.get(spec.name, 0), spec.version or 0)
    for env_id in supported_ids():
        spec = gym.spec(env_id)
        if (spec.version or 0) < latest[spec.name]:
            continue  # superseded versions still work in make_env but are not advertised
        if env_id.startswith("MiniGrid-"):
            u = gym.make(env_id).unwrapped
            family = f"minigrid/{family_of(env_id)}"
            size = (u.height * tile_size, u.width * tile_size)
            actions = FAMILY_ACTIONS[family_of(env_id)]
            expert = family_of(env_id) != "other"
        else:
            env = gym.make(env_id)
            family = env_id.split("-")[0]
            size = tuple(env.observation_space.shape[:2])
            actions = get_adapter(env_id).legal_actions
            expert = True
        rows.append({"id": env_id, "family": family, "legal_actions": list(actions),
                     "frame_size": size, "expert": expert})  # fmt: skip
    return rows + plugin_rows()


def plugin_rows() -> list[dict]:
    """``list_envs``' rows of the installed ``vlmppo.tasks`` plugins, each built and reset once (seed 0) for
    its frame size. A plugin that fails keeps its row, with the failure in ``error`` and no actions."""
    rows = []
    for name, point in sorted(task_entry_points().items()):
        family = f"plugin ({point.dist.name})" if point.dist else "plugin"
        try:
            adapter = get_adapter(name)
            env = make_env(name)
            try:
                obs, _ = env.reset(seed=0)
            finally:
                env.close()
        except EnvError as err:  # PluginError included: list the others, show what is wrong with this one
            rows.append({"id": name, "family": family, "legal_actions": [], "frame_size": None,
                         "expert": False, "error": str(err)})  # fmt: skip
            continue
        has_expert = type(adapter).expert is not TaskAdapter.expert
        rows.append({"id": name, "family": family, "legal_actions": list(adapter.legal_actions),
                     "frame_size": tuple(obs.shape[:2]), "expert": has_expert})  # fmt: skip
    return rows


def render_first_frame(env_id: str, seed: int, out_path: str | Path, *, prompt: str = "cot", **kwargs) -> str:
    """Writes the first frame of ``env_id`` after ``reset(seed=seed)`` as a PNG and returns the prompt.

    Args:
        env_id: Any supported id.
        seed: Reset seed.
        out_path: Where to write the PNG (parent folders are created).
        prompt: The prompt style to return (see ``get_adapter``).
        **kwargs: Passed to ``make_env`` (``observation``, ``tile_size``, env options).
    """
    options = {
        k: v for k, v in kwargs.items() if k not in ("observation", "tile_size", "adapter", "adapter_kwargs")
    }
    adapter = get_adapter(env_id, kwargs.get("observation", "full"), prompt, adapter=kwargs.get("adapter"),
                          adapter_kwargs=kwargs.get("adapter_kwargs"), env_kwargs=options)  # fmt: skip
    env = make_env(env_id, **kwargs)
    obs, info = env.reset(seed=seed)
    env.close()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(obs).save(out)
    return adapter.prompt(info)


__all__ = [
    "MINIGRID_ACTIONS",
    "adapter_from_config",
    "get_adapter",
    "list_envs",
    "make_env",
    "make_env_from_config",
    "plugin_rows",
    "register_envs",
    "render_first_frame",
]
