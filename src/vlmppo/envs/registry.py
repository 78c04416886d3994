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
from vlmppo.envs.probes import ProbeAdapter
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
    """Every id ``make_env`` accepts: ours, then the MiniGrid ids registered by the minigrid package."""
    minigrid_ids = sorted(i for i in gym.registry if i.startswith("MiniGrid-"))
    return [*OUR_ENVS, *minigrid_ids]


def _check_id(env_id: str) -> None:
    ids = supported_ids()
    if env_id in ids:
        return
    close = difflib.get_close_matches(env_id, ids, n=5, cutoff=0.5)
    hint = f"Did you mean: {', '.join(close)}?" if close else "See `vlmppo env list` for the ids."
    if env_id in gym.registry:
        raise EnvError(f"Env id {env_id!r} is a gymnasium env but not one vlmppo can drive "
                       "(gym_cards/*, probe/* or MiniGrid-*).", hint=hint)  # fmt: skip
    raise EnvError(f"Unknown env id {env_id!r}.", hint=hint)


def make_env(
    env_id: str,
    *,
    max_episode_steps: int | None = None,
    observation: str = "full",
    tile_size: int = 32,
    **kwargs,
) -> gym.Env:
    """Builds one env whose observations are HxWx3 uint8 RGB frames and whose ``info`` holds its state.

    Args:
        env_id: A ``gym_cards/*``, ``probe/*`` or ``MiniGrid-*`` id.
        max_episode_steps: Time limit; None keeps the env's own (MiniGrid: its ``max_steps``).
        observation: MiniGrid only: "full" render or the "agent_view".
        tile_size: MiniGrid only: pixels per grid cell.
        **kwargs: Passed to the env constructor (e.g. ``max_position=7``, ``solvable_only=False``).

    Returns:
        A gymnasium env. Step it with ``adapter.to_env_action(i)`` for ``adapter.legal_actions[i]``:
        the identity for cards and probes, MiniGrid's own action id for MiniGrid (whose env keeps
        MiniGrid's ``Discrete(7)``).

    Raises:
        EnvError: Unknown id (the message lists close matches) or unusable options.
    """
    _check_id(env_id)
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


def get_adapter(env_id: str, observation: str = "full", prompt: str = "cot") -> EnvAdapter:
    """The agent-facing adapter (prompt, legal actions, parser, expert, solved test) for ``env_id``.

    Args:
        env_id: Any supported id.
        observation: MiniGrid only: "full" or "agent_view" (the prompt describes what the model sees).
        prompt: The prompt style (``env.prompt``): ``cot``, ``action_only``, or for gym_cards ``rl4vlm``,
            ``rl4vlm_action_only``. Prompt, parser and answer format follow it together.

    Raises:
        EnvError: Unknown id, or a prompt style this env does not have.
    """
    _check_id(env_id)
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
        **env.kwargs,
    )


def adapter_from_config(env: EnvConfig) -> EnvAdapter:
    """The adapter of a config's ``env:`` section (its id, observation and prompt style). See ``get_adapter``."""
    return get_adapter(env.id, env.observation, env.prompt)


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
    adapter = get_adapter(env_id, kwargs.get("observation", "full"), prompt)
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
    "register_envs",
    "render_first_frame",
]
