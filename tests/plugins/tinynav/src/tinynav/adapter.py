"""TinyNav's adapter: what vlmppo needs to train a VLM on it (prompt, actions, expert, reward shaping)."""

from __future__ import annotations

from vlmppo.envs import ExpertAction, TaskAdapter

STEP_COST = 0.02  # shaping: a shorter path has a higher return


class TinyNavAdapter(TaskAdapter):
    # Index i is the env's action i (TaskAdapter.to_env_action is the identity).
    legal_actions = ["up", "down", "left", "right"]

    def task_text(self, info: dict) -> str:
        return (
            f"The picture shows a {info['size']}x{info['size']} grid. The red square is you, the green square "
            "is the goal. Each action moves you one cell; reach the goal."
        )

    def thoughts_hint(self) -> str:
        return 'In "thoughts", say where the goal is from you (up or down, left or right).'

    # The frame: TaskAdapter.frame uses env.render(), since TinyNav's observations are not pictures.

    def expert(self, env, info: dict) -> ExpertAction:
        (row, col), (goal_row, goal_col) = info["agent"], info["goal"]
        if row != goal_row:
            move = "down" if goal_row > row else "up"
        elif col != goal_col:
            move = "right" if goal_col > col else "left"
        else:
            return ExpertAction(None, "I am on the goal already.")
        return ExpertAction(self.legal_actions.index(move), f"The goal is {move} from me, so I move {move}.")

    def reward(self, reward: float, info_before: dict, info_after: dict) -> float:
        return reward - STEP_COST

    def is_solved(self, total_reward: float, info: dict) -> bool:
        return info["agent"] == info["goal"]
