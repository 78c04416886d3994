"""Breadth-first planner for MiniGrid: the shortest action sequence to the goal square.

It works on MiniGrid's own symbolic encoding (``Grid.encode()``: per cell ``[object, colour, state]``),
which the MiniGrid wrapper also puts into ``info["grid"]``; so the same planner serves the expert (reading
``env.unwrapped``) and the transition scorer (reading infos). The search state is the agent's cell and
heading, the colour of the key it carries, and which keys were taken and which doors opened, so plans
like "go to the key, pick it up, go to the door, open it, go to the goal" come out of one search.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from minigrid.core.constants import COLOR_TO_IDX, DIR_TO_VEC, OBJECT_TO_IDX, STATE_TO_IDX

IDX_TO_COLOR = {v: k for k, v in COLOR_TO_IDX.items()}
_EMPTY, _FLOOR, _GOAL = OBJECT_TO_IDX["empty"], OBJECT_TO_IDX["floor"], OBJECT_TO_IDX["goal"]
_DOOR, _KEY = OBJECT_TO_IDX["door"], OBJECT_TO_IDX["key"]
_OPEN, _LOCKED = STATE_TO_IDX["open"], STATE_TO_IDX["locked"]
DIRECTIONS = ("right", "down", "left", "up")


@dataclass(frozen=True)
class GridState:
    """What the planner needs: ``grid[x][y] = (object, colour, state)`` indices, the agent's position and
    direction (0 right, 1 down, 2 left, 3 up), and the carried object as (type, colour) or None."""

    grid: tuple[tuple[tuple[int, int, int], ...], ...]
    agent_pos: tuple[int, int]
    agent_dir: int
    carrying: tuple[str, str] | None

    @classmethod
    def from_env(cls, env) -> GridState:
        u = env.unwrapped
        carrying = None if u.carrying is None else (u.carrying.type, u.carrying.color)
        return cls(_freeze(u.grid.encode().tolist()), (int(u.agent_pos[0]), int(u.agent_pos[1])),
                   int(u.agent_dir), carrying)  # fmt: skip

    @classmethod
    def from_info(cls, info: dict) -> GridState:
        carrying = info.get("carrying")
        return cls(_freeze(info["grid"]), tuple(info["agent_pos"]), int(info["agent_dir"]),
                   None if carrying is None else tuple(carrying))  # fmt: skip

    def cells(self, obj: str) -> list[tuple[int, int, str]]:
        """(x, y, colour) of every cell holding ``obj``."""
        idx = OBJECT_TO_IDX[obj]
        return [
            (x, y, IDX_TO_COLOR[c[1]])
            for x, col in enumerate(self.grid)
            for y, c in enumerate(col)
            if c[0] == idx
        ]


def _freeze(grid) -> tuple:
    return tuple(tuple(tuple(cell) for cell in col) for col in grid)


def plan(state: GridState, actions: list[str]) -> list[str] | None:
    """Shortest sequence of ``actions`` (names as in the adapters) that steps onto a goal square.

    Keys and doors change as the plan goes (a picked key leaves its cell, a toggled door opens; a locked
    door opens only with a key of its colour). Drop and done never shorten a plan to the goal, so they are
    not searched. Lava and other objects block.

    Returns:
        The action names, or None when the goal cannot be reached with these actions (or there is none).
    """
    grid = state.grid
    width, height = len(grid), len(grid[0])
    carry = state.carrying[1] if state.carrying and state.carrying[0] == "key" else None
    start = (state.agent_pos, state.agent_dir, carry, frozenset())
    parents: dict = {start: None}
    queue = deque([start])

    def cell(pos, changed):
        obj, color, door_state = grid[pos[0]][pos[1]]
        if pos in changed:  # a taken key leaves floor behind; an opened door stays open
            return (_EMPTY, 0, 0) if obj == _KEY else (obj, color, _OPEN)
        return obj, color, door_state

    while queue:
        node = queue.popleft()
        pos, heading, carry, changed = node
        dx, dy = DIR_TO_VEC[heading]
        front = (pos[0] + int(dx), pos[1] + int(dy))
        inside = 0 <= front[0] < width and 0 <= front[1] < height
        obj, color, door_state = cell(front, changed) if inside else (-1, 0, 0)
        for action in actions:
            nxt = None
            if action == "turn left":
                nxt = (pos, (heading - 1) % 4, carry, changed)
            elif action == "turn right":
                nxt = (pos, (heading + 1) % 4, carry, changed)
            elif action == "move forward":
                if obj == _GOAL:
                    path = [action]
                    while parents[node] is not None:
                        node, taken = parents[node]
                        path.append(taken)
                    return path[::-1]
                if obj in (_EMPTY, _FLOOR) or (obj == _DOOR and door_state == _OPEN):
                    nxt = (front, heading, carry, changed)
            elif action == "pick up":
                if obj == _KEY and carry is None:
                    nxt = (pos, heading, IDX_TO_COLOR[color], changed | {front})
            elif action == "toggle":
                if (
                    obj == _DOOR
                    and door_state != _OPEN
                    and (door_state != _LOCKED or carry == IDX_TO_COLOR[color])
                ):
                    nxt = (pos, heading, carry, changed | {front})
            if nxt is not None and nxt not in parents:
                parents[nxt] = (node, action)
                queue.append(nxt)
    return None


def next_target(state: GridState, steps: list[str]) -> tuple[str, int, int, str]:
    """What a plan from ``state`` goes for first, and where: ``(object, column, row, colour)`` of the cell the
    first "pick up" or "toggle" acts on (a key, a door), else of the goal square its last move enters. Walks
    the plan's turns and moves from the agent's cell (a plan holds only moves that succeed)."""
    (x, y), heading = state.agent_pos, state.agent_dir
    for action in steps:
        dx, dy = (int(v) for v in DIR_TO_VEC[heading])
        if action in ("pick up", "toggle"):
            obj, color, _ = state.grid[x + dx][y + dy]
            return ("key" if obj == _KEY else "door"), x + dx, y + dy, IDX_TO_COLOR[color]
        if action == "turn left":
            heading = (heading - 1) % 4
        elif action == "turn right":
            heading = (heading + 1) % 4
        elif action == "move forward":
            x, y = x + dx, y + dy
    return "goal", x, y, IDX_TO_COLOR[state.grid[x][y][1]]
