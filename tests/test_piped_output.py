"""Output that goes to a pipe or a log is whole at any width: `vlmppo ... | grep X` finds every row and
every YAML line, at COLUMNS=40 as at 250. On a terminal, long lines wrap but nothing is cropped."""

from __future__ import annotations

import io
import json

import pytest
import yaml
from tests.helpers import run_cli

NARROW = {"COLUMNS": "40"}


def one_line_with(stdout: str, *parts: str) -> bool:
    """Whether one line of ``stdout`` holds every one of ``parts``, each unbroken."""
    return any(all(p in line for p in parts) for line in stdout.splitlines())


def test_presets_list_piped_at_40_columns_keeps_every_row_on_one_greppable_line():
    from vlmppo.config.presets import list_presets

    out = run_cli("presets", "list", env=NARROW)
    assert out.returncode == 0, out.stderr
    grep = [line for line in out.stdout.splitlines() if "minigrid-doorkey-qwen " in line]  # not ...-4bit
    assert len(grep) == 1
    for info in list_presets():
        assert one_line_with(out.stdout, info.name, info.env_id, info.family, info.purpose), info.name


@pytest.mark.e2e
def test_dry_run_yaml_piped_at_40_columns_is_the_exact_resolved_config():
    from vlmppo.commands._common import plan_rows
    from vlmppo.config import config_to_yaml, load_config

    overrides = ["run.output_dir=/a/rather/long/folder/that/does/not/fit/in/forty/columns/runs"]
    out = run_cli("ppo", "--preset", "minigrid-doorkey-qwen", *overrides, "--dry-run", env=NARROW)
    assert out.returncode == 0, out.stderr
    cfg = load_config("minigrid-doorkey-qwen", overrides=overrides)
    expected = config_to_yaml(cfg)
    assert out.stdout.startswith(expected)  # every character, braces and long paths included
    assert yaml.safe_load(out.stdout.split("plan: vlmppo")[0]) == yaml.safe_load(expected)
    for key, value in plan_rows(cfg, "ppo"):
        assert one_line_with(out.stdout, key, value), key


def test_env_list_piped_at_40_columns_keeps_every_env_on_one_line():
    from vlmppo.envs import list_envs

    out = run_cli("env", "list", env=NARROW)
    assert out.returncode == 0, out.stderr
    for row in list_envs():
        assert one_line_with(out.stdout, row["id"], ", ".join(row["legal_actions"])), row["id"]


def test_slurm_render_piped_at_40_columns_prints_the_script_verbatim(tmp_path):
    out = run_cli(
        "slurm", "render", "ppo", "--preset", "numberline-qwen", f"run.output_dir={tmp_path}", env=NARROW
    )
    assert out.returncode == 0, out.stderr
    script = next((tmp_path / "numberline-qwen").rglob("*.sbatch"))
    assert script.read_text() in out.stdout + "\n"
    assert f"== {script}" in out.stdout.splitlines()  # a plain heading, not a rule drawn to the width


@pytest.mark.e2e
def test_eval_compare_piped_at_40_columns_keeps_each_metric_on_one_line(tmp_path):
    common = ["--preset", "probe-color-tiny", f"run.output_dir={tmp_path}", "eval.episodes=4"]
    for policy in ("expert", "random"):
        assert run_cli("eval", *common, "--policy", policy).returncode == 0
    folders = [str(tmp_path / "probe-color-tiny/eval" / p) for p in ("expert", "random")]
    out = run_cli("eval", "--compare", *folders, env=NARROW)
    assert out.returncode == 0, out.stderr
    rates = [
        json.loads((tmp_path / f"probe-color-tiny/eval/{p}/metrics.json").read_text())
        for p in ("expert", "random")
    ]
    assert one_line_with(out.stdout, "success rate", *(f"{m['success_rate']:.1%}" for m in rates))
    assert one_line_with(out.stdout, "env", "probe/Color-v0")


@pytest.fixture
def terminal(monkeypatch):
    """The shared console as a 40-column colour terminal, writing to a buffer."""
    from rich.console import Console

    import vlmppo.console

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=40, highlight=False, emoji=False)
    monkeypatch.setattr(vlmppo.console, "console", console)
    return buffer


def visible(text: str) -> str:
    """The characters a terminal shows, without colour codes and line breaks."""
    import re

    return "".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def test_dry_run_on_a_40_column_terminal_wraps_the_yaml_without_cropping_it(terminal):
    from vlmppo.commands._common import print_dry_run
    from vlmppo.config import config_to_yaml, load_config

    cfg = load_config("minigrid-doorkey-qwen", overrides=["run.output_dir=/a/rather/long/folder/runs"])
    print_dry_run(cfg)
    assert visible(terminal.getvalue()) == visible(config_to_yaml(cfg))
