"""MiniGrid envs seen as RGB frames, with per-family action sets, prompts and a BFS expert.

Any ``MiniGrid-*`` id of the ``minigrid`` package works; DoorKey, Empty and MultiRoom have tailored
action sets, prompts and an expert. The model gets the full top-down render (or the agent's 7x7 view)
as uint8 RGB, straight from MiniGrid's renderer: no float round trip, which is how the original code
ended up inverting every colour.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlmppo.envs.adapter import EnvAdapter
from vlmppo.envs.gridplan import DIRECTIONS, GridState, next_target, plan
from vlmppo.envs.parsing import ExpertAction

MINIGRID_ACTIONS = {"turn left": 0, "turn right": 1, "move forward": 2, "pick up": 3, "drop": 4,
                    "toggle": 5, "done": 6}  # fmt: skip
FAMILY_ACTIONS = {
    "doorkey": ["turn left", "turn right", "move forward", "pick up", "toggle"],
    "empty": ["turn left", "turn right", "move forward"],
    "multiroom": ["turn left", "turn right", "move forward", "toggle"],
    "other": list(MINIGRID_ACTIONS),
}
_LOOK = (
    "You control the red triangle in a top-down grid world; the triangle's tip points the way you face. "
    "Grey squares are walls and black squares are floor."
)
_FAMILY_TASK = {
    "empty": "Walk onto the green square, the goal.",
    "doorkey": (
        "A wall splits the room. The only way through is a locked door: a square filled with its colour "
        "and a small slot. Pick up the key of the same colour (a small key shape on the floor), face the "
        "door and toggle it to open it, then walk onto the green square, the goal."
    ),
    "multiroom": (
        "The green square, the goal, is in the last of a chain of rooms joined by closed doors (squares "
        "outlined in their colour, with a handle). Face a door and toggle it to open it; an open door is a "
        "thin coloured frame you can walk through. Walk onto the goal."
    ),
}
_ACTION_HELP = {
    "turn left": '"turn left" and "turn right" rotate you a quarter turn in place',
    "move forward": '"move forward" steps one square the way you face (walls and closed doors block)',
    "pick up": '"pick up" takes the object in front of you',
    "drop": '"drop" puts down what you carry in front of you',
    "toggle": '"toggle" opens (or closes) the door in front of you; a locked door needs its key',
    "done": '"done" declares the mission complete',
}


def family_of(env_id: str) -> str:
    """The MiniGrid family that decides actions, prompt and expert: doorkey, empty, multiroom or other."""
    for name in ("DoorKey", "Empty", "MultiRoom"):
        if f"-{name}-" in env_id:
            return name.lower()
    return "other"


def symbolic_info(env: gym.Env) -> dict:
    """The symbolic state put into ``info`` (JSON-ready): MiniGrid's grid encoding as ``grid[x][y] =
    [object, colour, state]``, agent position and direction, what it carries, the mission, the step."""
    u = env.unwrapped
    return {
        "mission": u.mission,
        "agent_pos": [int(u.agent_pos[0]), int(u.agent_pos[1])],
        "agent_dir": int(u.agent_dir),
        "carrying": None if u.carrying is None else [u.carrying.type, u.carrying.color],
        "grid": u.grid.encode().tolist(),
        "step_count": int(u.step_count),
        "max_steps": int(u.max_steps),
    }


class MiniGridFrames(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Observation = RGB frame, info = symbolic state; actions stay MiniGrid's own ids (``Discrete(7)``).

    Callers turn a legal-action index into the MiniGrid id with ``adapter.to_env_action(index)``, as for
    every env (identity elsewhere), so replaying stored actions never depends on the wrapper.

    Args:
        env: A MiniGrid env from ``gymnasium.make``.
        observation: "full" (top-down render of the whole grid, ``height*tile x width*tile``) or
            "agent_view" (the agent's ``7x7`` view, the agent at the bottom centre facing up).
        tile_size: Pixels per grid cell.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, env: gym.Env, observation: str = "full", tile_size: int = 32):
        # Recording the arguments lets gymnasium rebuild the wrapped env from its spec (check_env does).
        gym.utils.RecordConstructorArgs.__init__(self, observation=observation, tile_size=tile_size)
        gym.Wrapper.__init__(self, env)
        if observation not in ("full", "agent_view"):
            raise ValueError(f"observation must be 'full' or 'agent_view', got {observation!r}")
        self.observation, self.tile_size = observation, tile_size
        u = env.unwrapped
        if observation == "full":
            shape = (u.height * tile_size, u.width * tile_size, 3)
        else:
            shape = (u.agent_view_size * tile_size, u.agent_view_size * tile_size, 3)
        self.observation_space = spaces.Box(0, 255, shape=shape, dtype=np.uint8)

    @property
    def render_mode(self) -> str:
        return "rgb_array"

    def frame(self) -> np.ndarray:
        # highlight=False: the shaded view cone would be one more thing to explain in the prompt.
        u = self.env.unwrapped
        img = u.get_frame(
            highlight=False, tile_size=self.tile_size, agent_pov=self.observation == "agent_view"
        )
        return np.ascontiguousarray(img, dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        _, info = self.env.reset(seed=seed, options=options)
        return self.frame(), {**info, **symbolic_info(self.env)}

    def step(self, action):
        _, reward, terminated, truncated, info = self.env.step(int(action))
        return self.frame(), float(reward), terminated, truncated, {**info, **symbolic_info(self.env)}

    def render(self) -> np.ndarray:
        return self.frame()


class MiniGridAdapter(EnvAdapter):
    """Prompt, parser and expert for a MiniGrid env. Expert: BFS over the true grid state (see
    ``vlmppo.envs.gridplan``); it only knows goal-square missions and abstains on others."""

    def __init__(self, env_id: str, observation: str = "full", prompt: str = "cot"):
        super().__init__(env_id, prompt)
        self.family = family_of(env_id)
        self.observation = observation
        self.legal_actions = list(FAMILY_ACTIONS[self.family])

    def to_env_action(self, index: int) -> int:
        return MINIGRID_ACTIONS[self.legal_actions[index]]

    def task_text(self, info: dict) -> str:
        look = _LOOK
        if self.observation == "agent_view":
            look += (
                " The image is your own view of the 7x7 squares ahead of you: you are at the bottom centre, "
                "facing the top of the image; floor you can see is dark grey and squares you cannot see "
                "are black."
            )
        task = _FAMILY_TASK.get(self.family, f"Your mission: {info.get('mission', '')}.")
        actions = "; ".join(_ACTION_HELP[a] for a in self.legal_actions if a != "turn right")
        return f"{look} {task} Actions: {actions}."

    def thoughts_hint(self) -> str:
        return (
            "In your thoughts, first say where you are, which way you face, and where your next target "
            "(key, door or goal) is, then decide."
        )

    def expert(self, env: gym.Env | None, info: dict) -> ExpertAction:
        # The info of our wrapper holds the whole grid, so stored episodes can be labelled without an env;
        # a raw MiniGrid env (empty info) is read directly.
        state = GridState.from_info(info) if "grid" in info else GridState.from_env(env)
        steps = plan(state, self.legal_actions)
        if steps is None:
            return ExpertAction(None, "no path to a goal square with these actions")
        x, y = state.agent_pos
        here = f"I am at column {x}, row {y}, facing {DIRECTIONS[state.agent_dir]}"
        return ExpertAction(self.action_index(steps[0]), f"{here}; {self._subgoal(state, steps)}: {steps[0]}")

    @staticmethod
    def _subgoal(state: GridState, steps: list[str]) -> str:
        # Where the next target is, as the prompt asks: with its position read out, the action follows from
        # two positions and a heading; without it the model must find the target in the image silently.
        # (The plan's length, once in the thought, is left out: it is not needed to act, and costs tokens.)
        kind, x, y, color = next_target(state, steps)
        where = f"column {x}, row {y}"
        if kind == "key":
            return f"the {color} key is at {where}, get it first"
        if kind == "door":
            return f"the {color} door is at {where}, open it"
        return f"the green goal is at {where}"

    def is_solved(self, total_reward: float, info: dict) -> bool:
        return total_reward > 0  # MiniGrid pays only on reaching the goal

    def expert_score(self, info_before, action_index, info_after, reward):
        # Distance = length of the shortest plan. Uses 10 / 8 / 1 / 0.
        action = self.legal_actions[action_index]
        if reward > 0:
            return 10, f"{action} reaches the goal"
        before = plan(GridState.from_info(info_before), self.legal_actions)
        after = plan(GridState.from_info(info_after), self.legal_actions)
        if before is None:
            return 1, "the goal was already out of reach"
        if after is None:
            return 0, f"{action} puts the goal out of reach"
        if len(after) < len(before):
            if action in ("pick up", "toggle"):
                return 10, f"{action} is the key interaction on the way to the goal"
            return 8, f"{action} follows a shortest path ({len(after)} steps left)"
        if len(after) == len(before):
            return 1, f"{action} changes nothing"
        return 0, f"{action} moves away from the goal ({len(after)} steps left instead of {len(before) - 1})"
