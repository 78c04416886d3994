"""The command line as a user meets it: help, presets, dry runs, and clear errors without tracebacks."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
import yaml
from tests.helpers import run_cli

COMMANDS = [
    [],
    ["collect"],
    ["label"],
    ["preprocess"],
    ["sft"],
    ["ppo"],
    ["eval"],
    ["pipeline"],
    ["slurm"],
    ["slurm", "render"],
    ["slurm", "submit"],
    ["slurm", "status"],
    ["slurm", "cancel"],
    ["slurm", "logs"],
    ["presets"],
    ["presets", "list"],
    ["presets", "show"],
    ["presets", "copy"],
    ["presets", "schema"],
    ["model"],
    ["model", "init"],
    ["model", "info"],
    ["env"],
    ["env", "list"],
    ["env", "show"],
    ["export"],
]

HELP_PROBE = """
import sys
from vlmppo.cli import app
try:
    app(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate", "gymnasium") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "vlmppo")
def test_help_imports_no_torch_and_ends_with_examples(command):
    out = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, *command, "--help"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": ""},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "HEAVY=\n" in out.stdout, out.stdout[-300:]
    body = out.stdout.split("HEAVY=")[0].rstrip()
    assert "Examples:" in body
    last_line = body.splitlines()[-1].strip()
    assert last_line.startswith("vlmppo "), (
        f"help of {command} should end with an example, ends: {last_line!r}"
    )


def test_version_and_module_entry_point():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("vlmppo ")


def test_presets_list_shows_every_preset():
    from vlmppo.config.presets import preset_names

    out = run_cli("presets", "list", env={"COLUMNS": "250"})
    assert out.returncode == 0
    for name in preset_names():
        assert name in out.stdout


@pytest.mark.e2e
def test_presets_show_copy_and_run_the_copy(tmp_path):
    shown = run_cli("presets", "show", "numberline-tiny")
    assert shown.returncode == 0 and shown.stdout.startswith("# numberline-tiny:")
    target = tmp_path / "mine.yaml"
    assert run_cli("presets", "copy", "numberline-tiny", str(target)).returncode == 0
    assert target.read_text() == shown.stdout
    again = run_cli("presets", "copy", "numberline-tiny", str(target))
    assert again.returncode == 1 and "--force" in again.stderr
    dry = run_cli("ppo", "--preset", str(target), "ppo.clip_range=0.25", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "clip_range: 0.25" in dry.stdout


def test_presets_schema_is_json_with_help_texts():
    out = run_cli("presets", "schema")
    schema = json.loads(out.stdout)
    ppo = schema["$defs"]["PpoConfig"]["properties"]
    assert "description" in ppo["thought_coef"]


@pytest.mark.e2e
@pytest.mark.parametrize("stage", ["collect", "label", "preprocess", "sft", "ppo", "eval", "pipeline"])
def test_dry_run_prints_resolved_yaml_and_plan(stage):
    out = run_cli(stage, "--preset", "numberline-tiny", "env.n_envs=2", "--dry-run")
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout.split("plan: vlmppo")[0])
    assert resolved["env"]["n_envs"] == 2
    assert f"plan: vlmppo {stage if stage != 'pipeline' else 'collect'}" in out.stdout


@pytest.mark.e2e
def test_ppo_dry_run_of_a_real_preset_prints_updates():
    out = run_cli("ppo", "--preset", "minigrid-doorkey-qwen", "--dry-run")
    assert out.returncode == 0
    assert "Qwen/Qwen2.5-VL-3B-Instruct" in out.stdout
    assert "118 (60416 env steps; asked 60000)" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["ppo", "--preset", "numberlin-tiny"], "Did you mean: numberline-tiny"),
        (["ppo", "--preset", "numberline-tiny", "ppo.gamma=abc"], "'ppo.gamma'"),
        (["ppo", "--preset", "numberline-tiny", "ppo.gamma"], "has no '='"),
        (["ppo", "--preset", "numberline-tiny", "ppo.bogus.deep=1"], "unknown key 'ppo.bogus'"),
        (["ppo"], "No config given"),
        (["presets", "show", "nope"], "Unknown preset 'nope'"),
    ],
)
def test_bad_input_gets_one_clear_message_exit_1_and_no_traceback(args, message):
    out = run_cli(*args)
    assert out.returncode == 1
    assert message in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_debug_env_var_shows_the_traceback():
    out = run_cli("ppo", "--preset", "numberlin-tiny", env={"VLMPPO_DEBUG": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_env_show_writes_the_first_frame_and_prints_the_prompt(tmp_path):
    from PIL import Image

    frame = tmp_path / "frame.png"
    out = run_cli("env", "show", "gym_cards/NumberLine-v0", "--seed", "3", "--out", str(frame))
    assert out.returncode == 0, out.stderr
    assert Image.open(frame).size == (300, 300)
    assert '"action"' in out.stdout and "Target" in out.stdout


def test_env_show_prints_the_paper_style_prompt_with_prompt_rl4vlm(tmp_path):
    frame = tmp_path / "frame.png"
    out = run_cli("env", "show", "gym_cards/Points24-v0", "--prompt", "rl4vlm", "--out", str(frame))
    assert out.returncode == 0, out.stderr
    assert '"cards": [x, y, z, w]' in out.stdout and '"current formula": ""' in out.stdout
    assert '"action": "{number}" or "{operator}"' in out.stdout
    bad = run_cli("env", "show", "MiniGrid-Empty-5x5-v0", "--prompt", "rl4vlm", "--out", str(frame))
    assert bad.returncode == 1 and "gym_cards tasks only" in bad.stderr and "Traceback" not in bad.stderr


def test_env_list_shows_ids_and_actions():
    out = run_cli("env", "list", env={"COLUMNS": "250"})
    assert out.returncode == 0
    assert "gym_cards/Points24-v0" in out.stdout and "probe/Color-v0" in out.stdout
    assert "MiniGrid-DoorKey-6x6-v0" in out.stdout and "pick up" in out.stdout


@pytest.mark.e2e
def test_env_without_subcommand_prints_versions_for_bug_reports():
    import platform

    out = run_cli("env", env={"COLUMNS": "40"})  # piped and narrow: each version on one whole line
    assert out.returncode == 0 and "transformers" in out.stdout and "torch" in out.stdout
    assert any("platform" in line and platform.platform() in line for line in out.stdout.splitlines())


def test_unknown_env_id_lists_close_matches(tmp_path):
    out = run_cli("env", "show", "gym_cards/NumberLin-v0", "--out", str(tmp_path / "f.png"))
    assert out.returncode == 1 and "gym_cards/NumberLine-v0" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.e2e
def test_model_init_writes_a_tiny_model_that_model_info_describes(tmp_path):
    folder = tmp_path / "tiny llava"
    out = run_cli("model", "init", "llava", "--out", str(folder), env={"COLUMNS": "300"})
    assert out.returncode == 0, out.stderr
    assert (folder / "config.json").is_file()
    # The override it prints pastes onto a command line as one word, space and all.
    assert shlex.split(out.stdout.split("use it with ", 1)[1]) == [f"model.path={folder.resolve()}"]
    info = run_cli("model", "info", str(folder), "--image-size", "64", env={"COLUMNS": "40"})
    assert info.returncode == 0, info.stderr
    assert "llava" in info.stdout and "param" in info.stdout.lower()
    assert any(line.startswith("│ path") and str(folder) in line for line in info.stdout.splitlines())


@pytest.mark.e2e
def test_model_info_of_a_missing_path_is_a_clear_error(tmp_path):
    out = run_cli("model", "info", str(tmp_path / "nope"))
    assert out.returncode == 1 and "nope" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("stage", ["collect", "ppo"])
def test_a_run_folder_that_cannot_be_created_is_one_clear_error(tmp_path, stage):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = run_cli(stage, "--preset", "probe-constant-tiny", f"run.output_dir={blocker}/runs",
                  env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert out.returncode == 1
    err = " ".join(out.stderr.split())
    assert f"Could not access {blocker}/runs/probe-constant-tiny: Not a directory" in err
    assert "run.output_dir" in err and "Traceback" not in out.stderr
    assert blocker.read_text() == "not a folder"


def test_a_failing_command_leaves_no_config_yaml_behind(tmp_path):
    missing = tmp_path / "nope"
    args = ["collect", "--preset", "numberline-tiny", f"run.output_dir={tmp_path}", "--policy", "checkpoint",
            "--ckpt", str(missing)]  # fmt: skip
    out = run_cli(*args)
    assert out.returncode == 1 and "does not exist" in out.stderr
    assert list(tmp_path.rglob("config.yaml")) == []
    # Over an earlier command's config.yaml, a failing one leaves that file as it was.
    config = tmp_path / "numberline-tiny/config.yaml"
    config.write_text("# the last command that ran\n")
    out = run_cli(*args, "collect.episodes=3")
    assert out.returncode == 1 and config.read_text() == "# the last command that ran\n"
