"""Installed task plugins through the CLI: `vlmppo env list|show` pick them up, a broken one is one clear message,
and the shipped example (tests/plugins/tinynav) trains end to end: collect -> label -> preprocess -> sft -> ppo
-> eval on a tiny model."""

from __future__ import annotations

import json
import re
import shlex
import textwrap

import pytest
from PIL import Image
from tests.helpers import PLUGINS, install_plugin, run_cli, with_path

pytestmark = pytest.mark.e2e  # pip installs and the CLI in subprocesses

USER_PYPROJECT = """
[build-system]
requires = ["hatchling>=1.21"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "0.0.1"

[project.entry-points."vlmppo.tasks"]
"{entry}" = "{module}:{target}"

[tool.hatch.build.targets.wheel]
packages = ["{module}"]
"""

# A user's task written in a temp folder: a plain gymnasium env that names its actions, so the default
# adapter drives it with no vlmppo code at all.
SWITCH_ENV = '''
import gymnasium as gym
import numpy as np


class LightSwitch(gym.Env):
    """Turn the light on: the frame is dark until the agent presses "on"."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4, "action_names": ["on", "off"]}
    task_description = "The picture is the room. Make it bright."

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.action_space = gym.spaces.Discrete(2)
        self.observation_space = gym.spaces.Box(0, 255, (24, 40, 3), np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.light = False
        return self.render(), {"light": False}

    def step(self, action):
        self.light = action == 0
        return self.render(), float(self.light), self.light, False, {"light": self.light}

    def render(self):
        return np.full((24, 40, 3), 250 if self.light else 10, dtype=np.uint8)
'''


def user_package(folder, name, module, entry, target, source):
    package = folder / name
    (package / module).mkdir(parents=True)
    (package / "pyproject.toml").write_text(
        USER_PYPROJECT.format(name=name, module=module, entry=entry, target=target)
    )
    (package / module / "__init__.py").write_text(textwrap.dedent(source))
    return package


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder with the example plugin, a user's plugin and a broken one installed, as pip installs them."""
    work = tmp_path_factory.mktemp("plugins")
    target = work / "site"
    install_plugin(PLUGINS / "tinynav", target)
    install_plugin(user_package(work, "light-switch", "lightswitch", "rooms/LightSwitch-v0", "LightSwitch",
                                SWITCH_ENV), target)  # fmt: skip
    install_plugin(user_package(work, "broken-task", "brokentask", "broken/Task-v0", "TASK",
                                "import simulator_that_is_not_installed\n"), target)  # fmt: skip
    return target


def test_env_list_shows_installed_plugins_beside_the_built_ins_and_a_broken_one_with_its_error(site):
    out = run_cli("env", "list", env=with_path(site) | {"COLUMNS": "400"})
    assert out.returncode == 0, out.stderr
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") >= 5}
    assert re.search(r"plugin \(vlmppo-tinynav\) +│ up, down, left, right +│ 56x56", rows["TinyNav-v0"])
    assert re.search(r"plugin \(light-switch\) +│ on, off +│ 40x24", rows["rooms/LightSwitch-v0"])
    assert "broken: plugin 'broken/Task-v0'" in rows["broken/Task-v0"]
    assert "No module named 'simulator_that_is_not_installed'" in rows["broken/Task-v0"]
    assert "gym_cards/NumberLine-v0" in rows


def test_env_show_draws_a_plugins_first_frame_and_prints_its_prompt(site, tmp_path):
    out = run_cli(
        "env", "show", "TinyNav-v0", "--seed", "3", "--out", str(tmp_path / "nav.png"), env=with_path(site)
    )
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "nav.png").size == (56, 56)
    assert "The red square is you, the green square is the goal." in out.stdout
    assert 'Legal actions: "up", "down", "left", "right".' in out.stdout
    user = run_cli(
        "env", "show", "rooms/LightSwitch-v0", "--out", str(tmp_path / "room.png"), env=with_path(site)
    )
    assert user.returncode == 0, user.stderr
    assert "The picture is the room. Make it bright." in user.stdout and '"on", "off"' in user.stdout
    assert Image.open(tmp_path / "room.png").getpixel((0, 0)) == (10, 10, 10)


def test_env_show_takes_module_colon_class_and_an_adapter_from_a_folder_on_the_path(tmp_path):
    (tmp_path / "myrooms.py").write_text(textwrap.dedent(SWITCH_ENV))
    (tmp_path / "myadapters.py").write_text(textwrap.dedent("""
        from vlmppo.envs import TaskAdapter

        class RoomAdapter(TaskAdapter):
            legal_actions = ["light on", "light off"]

            def task_text(self, info):
                return "The light is " + ("on." if info["light"] else "off.")
    """))  # fmt: skip
    out = run_cli("env", "show", "myrooms:LightSwitch", "--adapter", "myadapters:RoomAdapter",
                  "--out", str(tmp_path / "f.png"), env=with_path(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "The light is off." in out.stdout and '"light on", "light off"' in out.stdout


def test_env_show_of_a_broken_plugin_is_one_message_without_a_traceback(site, tmp_path):
    out = run_cli("env", "show", "broken/Task-v0", "--out", str(tmp_path / "x.png"), env=with_path(site))
    assert out.returncode == 1
    assert "plugin 'broken/Task-v0' (entry point 'brokentask:TASK' of broken-task)" in out.stderr
    assert "Traceback" not in out.stderr and "pip install -e" in out.stderr
    missing = run_cli("env", "show", "myrooms:Nope", env=with_path(tmp_path))
    assert missing.returncode == 1 and "cannot import 'myrooms'" in missing.stderr


SMALL = ["collect.episodes=8", "sft.max_steps=4", "sft.eval_every=4", "sft.save_every=4", "ppo.total_env_steps=32",
         "ppo.max_new_tokens=8", "ppo.n_epochs=1", "eval.episodes=4", "eval.max_new_tokens=8", "eval.trajectories=1"]  # fmt: skip


def test_the_example_plugin_trains_end_to_end_collect_sft_ppo_eval(site, tmp_path):
    preset = PLUGINS / "tinynav" / "tinynav-tiny.yaml"
    out = run_cli("pipeline", "--preset", str(preset), f"run.output_dir={tmp_path}", "run.name=nav", *SMALL,
                  env=with_path(site))  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    run = tmp_path / "nav"
    for stage in ("collect", "label", "preprocess", "sft", "ppo", "eval"):
        assert re.search(rf"│ {stage} +│ ran +│", out.stdout), stage
    # Collect played the plugin's env with its expert, on the adapter's frames (render(), 56x56).
    steps = [json.loads(line) for line in (run / "collect/episodes.jsonl").read_text().splitlines()]
    assert {s["env_id"] for s in steps} == {"TinyNav-v0"} and {s["episode"] for s in steps} == set(range(8))
    assert {s["action_text"] for s in steps} <= {"up", "down", "left", "right"}
    assert Image.open(run / "collect" / steps[0]["frame"]).size == (56, 56)
    assert all(s["reward"] in (-0.02, 0.98) for s in steps)  # the adapter's step cost on the env's 0/1
    # SFT learned from the plugin's prompt; PPO and eval ran on it; the expert baseline always solves it.
    assert "red square is you" in (run / "data/train.jsonl").read_text()
    assert (run / "ppo/checkpoints/last/adapter_model.safetensors").is_file()
    expert = json.loads((run / "eval/expert/metrics.json").read_text())
    assert expert["success_rate"] == 1.0 and expert["episodes"] == 4
    assert json.loads((run / "eval/ppo-000001/metrics.json").read_text())["episodes"] == 4

    # Share it: the exported card names the plugin, this checkpoint's eval beside the baselines, and the command.
    shared = tmp_path / "shared"
    exported = run_cli(
        "export", "--ckpt", str(run / "ppo/checkpoints/last"), "--out", str(shared), env=with_path(site)
    )
    assert exported.returncode == 0, exported.stderr
    card = (shared / "README.md").read_text()
    assert "- **Environment:** `TinyNav-v0`" in card and f"- **Preset:** `{preset}`" in card
    assert "| **this model** (ppo-000001) | 4 |" in card and "| expert (baseline) | 4 | 100.0% |" in card
    assert shlex.join(["vlmppo", "pipeline", "--preset", str(preset)]) in card
    assert "| ppo | checkpoint 000001 (this model)" in card and (shared / "assets/episode.gif").is_file()
