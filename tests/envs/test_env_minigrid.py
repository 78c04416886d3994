"""MiniGrid: frames, action mapping, symbolic info, and the BFS expert."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from minigrid.core.constants import IDX_TO_OBJECT as OBJ_NAMES

import vlmppo.envs as envs
from vlmppo.envs.gridplan import GridState, next_target, plan

DOORKEY, EMPTY, MULTIROOM = (
    "MiniGrid-DoorKey-6x6-v0",
    "MiniGrid-Empty-Random-6x6-v0",
    "MiniGrid-MultiRoom-N2-S4-v0",
)


@pytest.mark.parametrize("env_id", [DOORKEY, EMPTY, MULTIROOM])
def test_bfs_expert_solves_100_seeds(env_id):
    # The raw MiniGrid env (no rendering) keeps this fast; the expert reads env.unwrapped.
    adapter = envs.get_adapter(env_id)
    env = gym.make(env_id)
    wins, lengths = 0, []
    for seed in range(100):
        _, info = env.reset(seed=seed)
        total, steps = 0.0, 0
        while steps < 200:
            steps += 1
            choice = adapter.expert(env, info)
            assert choice.index is not None, choice.reasoning
            _, reward, terminated, truncated, info = env.step(adapter.to_env_action(choice.index))
            total += reward
            if terminated or truncated:
                break
        wins += adapter.is_solved(total, info)
        lengths.append(steps)
    print(f"{env_id}: expert success {wins}/100, mean length {np.mean(lengths):.1f}")
    assert wins == 100


def test_full_frame_is_the_top_down_render_and_agent_view_the_pov():
    env = envs.make_env(DOORKEY, tile_size=16)
    obs, _ = env.reset(seed=1)
    expected = env.unwrapped.get_frame(highlight=False, tile_size=16)
    assert obs.dtype == np.uint8 and obs.shape == (96, 96, 3) and np.array_equal(obs, expected)
    view = envs.make_env(DOORKEY, observation="agent_view", tile_size=8)
    obs, _ = view.reset(seed=1)
    assert obs.shape == (56, 56, 3)
    # The agent (a red triangle, lightened by the visibility shading) is at the bottom centre of its view.
    bottom_centre = obs[48:56, 24:32].reshape(-1, 3).astype(int)
    assert any(r == 255 and g < 100 and b < 100 for r, g, b in bottom_centre)


def test_action_indices_map_to_minigrid_actions_per_family():
    adapter = envs.get_adapter(DOORKEY)
    assert [adapter.to_env_action(i) for i in range(5)] == [0, 1, 2, 3, 5]
    assert envs.get_adapter(MULTIROOM).legal_actions == ["turn left", "turn right", "move forward", "toggle"]
    env = envs.make_env(DOORKEY)
    assert env.action_space == gym.spaces.Discrete(7)  # MiniGrid's own ids; callers map indices
    _, info = env.reset(seed=0)
    before = info["agent_dir"]
    _, _, _, _, info = env.step(adapter.to_env_action(1))  # "turn right"
    assert info["agent_dir"] == (before + 1) % 4


def test_info_carries_the_symbolic_state():
    env = envs.make_env(DOORKEY)
    _, info = env.reset(seed=0)
    u = env.unwrapped
    assert info["agent_pos"] == list(u.agent_pos) and info["agent_dir"] == u.agent_dir
    assert info["carrying"] is None and info["mission"] == u.mission
    assert np.array_equal(np.array(info["grid"]), u.grid.encode())
    state = GridState.from_info(info)
    assert state.cells("key") and state.cells("door") and state.cells("goal")


def test_expert_works_from_a_stored_info_without_the_env():
    env = envs.make_env(DOORKEY)
    _, info = env.reset(seed=3)
    adapter = envs.get_adapter(DOORKEY)
    assert adapter.expert(None, info) == adapter.expert(env, {})
    assert "key" in adapter.expert(None, info).reasoning


def _act(env, adapter, index):
    return env.step(adapter.to_env_action(index))


def _walk_to_key(env, adapter, info):
    """Follows the expert until the key is right in front; returns the info there."""
    while adapter.legal_actions[adapter.expert(env, info).index] != "pick up":
        info = _act(env, adapter, adapter.expert(env, info).index)[4]
    return info


def test_scores_reward_the_key_pickup_progress_and_punish_detours():
    env = envs.make_env(DOORKEY)
    adapter = envs.get_adapter(DOORKEY)
    _, info = env.reset(seed=0)
    best = adapter.expert(env, info).index
    _, reward, _, _, after = _act(env, adapter, best)
    assert adapter.expert_score(info, best, after, reward)[0] == 8
    info = _walk_to_key(env, adapter, after)
    pick = adapter.action_index("pick up")
    _, reward, _, _, after = _act(env, adapter, pick)
    assert after["carrying"][0] == "key"
    assert adapter.expert_score(info, pick, after, reward)[0] == 10
    again = _act(env, adapter, pick)[4]  # nothing to pick up any more
    assert adapter.expert_score(after, pick, again, 0.0)[0] == 1


def test_score_is_zero_for_turning_away_and_ten_on_reaching_the_goal():
    env = envs.make_env("MiniGrid-Empty-5x5-v0")
    adapter = envs.get_adapter("MiniGrid-Empty-5x5-v0")
    _, info = env.reset(seed=0)  # agent at (1, 1) facing right; goal at (3, 3)
    forward = adapter.action_index("move forward")
    left = adapter.action_index("turn left")
    _, _, _, _, turned = _act(env, adapter, left)
    assert adapter.expert_score(info, left, turned, 0.0)[0] == 0
    assert adapter.expert_score(info, forward, info, 0.9)[0] == 10


def test_planner_opens_a_locked_door_only_with_its_key():
    env = gym.make(DOORKEY)
    env.reset(seed=0)
    state = GridState.from_env(env)
    steps = plan(state, ["turn left", "turn right", "move forward", "pick up", "toggle"])
    assert steps.index("pick up") < steps.index("toggle") and steps[-1] == "move forward"
    assert plan(state, ["turn left", "turn right", "move forward", "toggle"]) is None


@pytest.mark.parametrize("env_id", [DOORKEY, EMPTY, MULTIROOM])
def test_the_experts_thought_says_where_its_next_target_is_as_the_prompt_asks(env_id):
    # Along a whole expert episode: the thought names the cell of what the plan goes for next (the key until
    # it is carried, then the door until it is open, then the goal), read from the true grid.
    adapter, env = envs.get_adapter(env_id), gym.make(env_id)
    for seed in range(5):
        _, info = env.reset(seed=seed)
        kinds = []
        for _ in range(60):
            choice = adapter.expert(env, info)
            state = GridState.from_env(env)
            kind, x, y, color = next_target(state, plan(state, adapter.legal_actions))
            obj, _, _ = env.unwrapped.grid.get(x, y).encode()
            assert {"key": "key", "door": "door", "goal": "goal"}[kind] == OBJ_NAMES[obj]
            assert f"the {color} {kind} is at column {x}, row {y}" in choice.reasoning
            kinds.append(kind)
            _, reward, terminated, truncated, info = env.step(adapter.to_env_action(choice.index))
            if terminated or truncated:
                break
        assert reward > 0 and kinds[-1] == "goal"
        order = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
        assert order == {DOORKEY: ["key", "door", "goal"], EMPTY: ["goal"]}.get(env_id, order)


def test_prompt_describes_what_the_frame_shows_and_lists_the_actions():
    prompt = envs.get_adapter(DOORKEY).prompt(
        {"mission": "use the key to open the door and then get to the goal"}
    )
    for words in ("red triangle", "green square", "locked door", '"pick up"', '"toggle"', '"thoughts"'):
        assert words in prompt
    other = envs.get_adapter("MiniGrid-Fetch-5x5-N2-v0").prompt({"mission": "pick up a blue ball"})
    assert "pick up a blue ball" in other


def test_expert_abstains_on_missions_without_a_goal_square():
    env = envs.make_env("MiniGrid-Fetch-5x5-N2-v0")
    _, info = env.reset(seed=0)
    choice = envs.get_adapter("MiniGrid-Fetch-5x5-N2-v0").expert(env, info)
    assert choice.index is None and choice.reasoning


@pytest.mark.parametrize("name", ["doorkey", "empty", "multiroom"])
def test_minigrid_presets_state_their_step_limit(name):
    from vlmppo.config import load_config, presets_dir

    assert load_config(f"minigrid-{name}-qwen").env.max_episode_steps == 100
    text = (presets_dir() / f"minigrid-{name}-qwen.yaml").read_text()
    assert "# Step limit per episode" in text and "max_episode_steps: 100" in text
