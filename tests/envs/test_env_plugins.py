"""Task plugins in process: a user's env and adapter named by env.id/env.adapter, the no-code adapter, and one
clear PluginError for each way a plugin can be broken."""

from __future__ import annotations

import sys
import textwrap
import uuid

import numpy as np
import pytest

import vlmppo.envs as envs
from vlmppo.config.schema import EnvConfig
from vlmppo.errors import EnvError, PluginError

GRID_ENV = '''
import gymnasium as gym
import numpy as np
from gymnasium import spaces


class LineEnv(gym.Env):
    """Walk right along a line of {n} cells; reward 1 at the end."""

    metadata = {{"render_modes": ["rgb_array"], "render_fps": 4, "action_names": ["left", "right"]}}

    def __init__(self, n={n}, render_mode=None, frame_dtype="uint8"):
        self.n, self.render_mode, self.frame_dtype = n, render_mode, frame_dtype
        self.action_space = spaces.Discrete(2)
        self.observation_space = spaces.Discrete(n)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = int(self.np_random.integers(0, self.n - 1))
        return self.pos, {{"pos": self.pos, "n": self.n}}

    def step(self, action):
        self.pos = max(0, self.pos - 1) if action == 0 else self.pos + 1
        done = self.pos == self.n - 1
        return self.pos, float(done), done, False, {{"pos": self.pos, "n": self.n}}

    def render(self):
        frame = np.zeros((8, 8 * self.n, 3), dtype=self.frame_dtype)
        frame[:, 8 * self.pos : 8 * self.pos + 8] = 255
        return frame


gym.register(id="{module}/Line-v0", entry_point="{module}:LineEnv")
'''

ADAPTER = """
from vlmppo.envs import TaskAdapter


class LineAdapter(TaskAdapter):
    legal_actions = ["left", "right"]

    def task_text(self, info):
        return {task_text}

    def expert(self, env, info):
        return {expert}

    def reward(self, reward, before, after):
        return {reward}
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Writes a module into a temp folder on sys.path and returns its (unique) name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str, **fields) -> str:
        name = f"userplugin_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source.format(module=name, **fields)))
        return name

    yield write
    for name in [m for m in sys.modules if m.startswith("userplugin_")]:
        del sys.modules[name]


def line_plugin(plugin, **adapter_fields) -> tuple[str, str]:
    fields = {"task_text": '"Walk right to the end of the line."', "expert": '"right"',
              "reward": "reward - 0.1"} | adapter_fields  # fmt: skip
    return plugin(GRID_ENV, n=4), plugin(ADAPTER, **fields)


def play(env, adapter, seed=0, limit=20):
    obs, info = env.reset(seed=seed)
    frames, total = [obs], 0.0
    for _ in range(limit):
        action = adapter.expert(env, info)
        obs, reward, terminated, truncated, info = env.step(adapter.to_env_action(action.index))
        frames.append(obs)
        total += reward
        if terminated or truncated:
            break
    return frames, total, info


def test_a_user_env_class_and_adapter_named_in_the_config_play_with_frames_and_shaped_rewards(plugin):
    env_module, adapter_module = line_plugin(plugin)
    cfg = EnvConfig(id=f"{env_module}:LineEnv", adapter=f"{adapter_module}:LineAdapter", max_episode_steps=9)
    adapter = envs.adapter_from_config(cfg)
    env = envs.make_env_from_config(cfg)
    frames, total, info = play(env, adapter)
    assert all(f.dtype == np.uint8 and f.shape == (8, 32, 3) for f in frames)  # render(), not the int obs
    assert info["pos"] == 3 and adapter.is_solved(total, info)
    steps = len(frames) - 1
    assert total == pytest.approx(1.0 - 0.1 * steps)  # the adapter's shaping, step by step
    assert adapter.expert(None, info).index == 1  # an action string is read as its index
    prompt = adapter.prompt(info)
    assert prompt.startswith("Walk right to the end of the line.") and '"left", "right"' in prompt


def test_the_vec_env_built_from_a_plugin_config_steps_with_its_adapter(plugin):
    env_module, adapter_module = line_plugin(plugin)
    cfg = EnvConfig(id=f"{env_module}:LineEnv", adapter=f"{adapter_module}:LineAdapter", max_episode_steps=3)
    vec = envs.make_vec_env_from_config(cfg, n_envs=2, seed=5)
    assert vec.adapter.legal_actions == ["left", "right"]
    obs, _ = vec.reset()
    for _ in range(3):
        obs, rewards, terminated, truncated, infos = vec.step([0, 0])
    assert truncated.all() and not terminated.any()  # walking left for 3 steps hits the config's time limit
    assert infos[0]["episode"]["length"] == 3 and infos[0]["episode"]["return"] == pytest.approx(-0.3)
    assert obs[0].shape == (8, 32, 3)
    vec.close()


def test_a_gymnasium_id_registered_by_a_module_works_as_module_colon_id(plugin):
    env_module = plugin(GRID_ENV, n=5)
    env_id = f"{env_module}:{env_module}/Line-v0"
    adapter = envs.get_adapter(env_id)  # the no-code adapter: the env's metadata names its actions
    assert adapter.legal_actions == ["left", "right"] and isinstance(adapter, envs.DiscreteAdapter)
    obs, _ = envs.make_env(env_id, max_episode_steps=4).reset(seed=1)
    assert obs.shape == (8, 40, 3)


def test_any_gymnasium_id_trains_with_the_default_adapter_and_named_actions_without_code():
    cfg = EnvConfig(id="CartPole-v1", adapter_kwargs={"actions": ["push left", "push right"],
                                                      "task": "Keep the pole upright."})  # fmt: skip
    adapter = envs.adapter_from_config(cfg)
    assert adapter.prompt({}).splitlines()[:2] == [
        "Keep the pole upright.",
        'Legal actions: "push left", "push right".',
    ]
    assert (
        adapter.parse('{"thoughts": "tilts right", "action": "push right"}', np.random.default_rng(0)).index
        == 1
    )
    env = envs.make_env_from_config(cfg)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.uint8 and obs.ndim == 3  # CartPole's render(), since its observation is a vector
    assert env.step(adapter.to_env_action(1))[1] == 1.0


def test_the_default_adapter_without_action_names_says_how_to_give_them():
    with pytest.raises(PluginError, match=r"'CartPole-v1' has 2 actions.*env.adapter_kwargs.actions"):
        envs.get_adapter("CartPole-v1")
    with pytest.raises(PluginError, match="has 2 actions"):
        envs.get_adapter("CartPole-v1", adapter_kwargs={"actions": ["a", "b", "c"]})


def test_an_unknown_id_lists_close_matches():
    with pytest.raises(EnvError, match=r"Unknown env id 'CartPol-v1'.*Did you mean: CartPole-v1"):
        envs.get_adapter("CartPol-v1")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:Env", r"env.id 'no_such_module_xyz:Env': cannot import 'no_such_module_xyz'"),
        ("{env}:Missing", r"has no 'Missing'"),
        ("{env}", r"Unknown env id"),
    ],
)
def test_an_env_id_that_names_nothing_importable_is_one_clear_message(plugin, spec, message):
    env_module, _ = line_plugin(plugin)
    with pytest.raises(EnvError, match=message):
        envs.make_env(spec.format(env=env_module))


def test_a_plugin_that_raises_on_import_names_the_module_and_the_error(plugin):
    broken = plugin("raise RuntimeError('the simulator is not configured')\n")
    with pytest.raises(PluginError, match=rf"importing '{broken}' raised RuntimeError: the simulator is not"):
        envs.get_adapter(f"{broken}:Env")


def test_an_adapter_without_task_text_names_the_missing_method(plugin):
    env_module, _ = line_plugin(plugin)
    bare = plugin(
        "from vlmppo.envs import TaskAdapter\n\nclass Bare(TaskAdapter):\n    legal_actions = ['x']\n"
    )
    with pytest.raises(
        PluginError, match=rf"adapter {bare}:Bare of plugin '{env_module}:LineEnv' does not define task_text"
    ):
        envs.get_adapter(f"{env_module}:LineEnv", adapter=f"{bare}:Bare")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("class NotAnAdapter:\n    pass\n", r"must be a subclass of vlmppo.envs.TaskAdapter"),
        ("from vlmppo.envs import TaskAdapter\n\nclass A(TaskAdapter):\n    legal_actions = 'up'\n"
         "    def task_text(self, info):\n        return 'x'\n", r"legal_actions='up'; it must be a non-empty list"),
        ("from vlmppo.envs import TaskAdapter\n\nclass A(TaskAdapter):\n    legal_actions = ['up', 'up']\n"
         "    def task_text(self, info):\n        return 'x'\n", r"distinct"),
    ],
)  # fmt: skip
def test_an_adapter_that_is_not_one_is_refused_by_name(plugin, source, message):
    env_module, _ = line_plugin(plugin)
    adapter_module = plugin(source)
    name = "NotAnAdapter" if "NotAnAdapter" in source else "A"
    with pytest.raises(PluginError, match=message):
        envs.get_adapter(f"{env_module}:LineEnv", adapter=f"{adapter_module}:{name}")


@pytest.mark.parametrize(
    ("fields", "call", "message"),
    [
        ({"task_text": "42"}, "prompt", r":LineAdapter.task_text returned int 42; it must return a str"),
        (
            {"expert": '"jump"'},
            "expert",
            r":LineAdapter.expert returned 'jump'; it must return an ExpertAction",
        ),
        ({"reward": '"lots"'}, "step", r":LineAdapter.reward returned str 'lots'; it must return a number"),
    ],
)
def test_an_adapter_method_returning_the_wrong_type_names_the_method_and_the_value(
    plugin, fields, call, message
):
    env_module, adapter_module = line_plugin(plugin, **fields)
    cfg = EnvConfig(id=f"{env_module}:LineEnv", adapter=f"{adapter_module}:LineAdapter")
    adapter, env = envs.adapter_from_config(cfg), envs.make_env_from_config(cfg)
    _, info = env.reset(seed=0)
    with pytest.raises(PluginError, match=rf"{adapter_module}{message}"):
        {"prompt": lambda: adapter.prompt(info), "expert": lambda: adapter.expert(env, info),
         "step": lambda: env.step(1)}[call]()  # fmt: skip


def test_an_env_whose_frame_is_not_rgb_uint8_is_refused_naming_render(plugin):
    env_module, adapter_module = line_plugin(plugin)
    cfg = EnvConfig(id=f"{env_module}:LineEnv", adapter=f"{adapter_module}:LineAdapter",
                    kwargs={"frame_dtype": "float32"})  # fmt: skip
    with pytest.raises(PluginError, match=rf"{env_module}:LineEnv.render\(\) returned an array of shape \(8, 32, 3\) "
                                          "and dtype float32, not the \\[H, W, 3\\] uint8"):  # fmt: skip
        envs.make_env_from_config(cfg).reset(seed=0)


def test_a_factory_that_returns_no_env_is_refused(plugin):
    module = plugin("def make(render_mode=None):\n    return 'not an env'\n")
    with pytest.raises(PluginError, match=r"'make' returned a str, not a gymnasium.Env"):
        envs.make_env(f"{module}:make", adapter_kwargs={"actions": ["a"]})


def test_the_gym_cards_prompt_style_is_refused_for_a_plugin(plugin):
    env_module, adapter_module = line_plugin(plugin)
    with pytest.raises(ValueError, match="RL4VLM's gym-cards prompt"):
        EnvConfig(id=f"{env_module}:LineEnv", prompt="rl4vlm")
    with pytest.raises(EnvError, match="RL4VLM's gym-cards prompt"):
        envs.get_adapter(f"{env_module}:LineEnv", prompt="rl4vlm", adapter=f"{adapter_module}:LineAdapter")
