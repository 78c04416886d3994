"""run.name is one folder name and nothing more; a shell line printed for pasting runs only what it says."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from tests.helpers import run_cli

from vlmppo.config import load_config
from vlmppo.errors import ConfigError


@pytest.mark.parametrize(
    "name",
    ["../escape", "<tmp>/abs", "..", "-rf", ".hidden", "a b", "$(touch pwned)", "x;y", "tab\there", ""],
)
def test_a_run_name_that_is_not_one_folder_name_is_refused_and_nothing_is_written(tmp_path, name):
    work = tmp_path / "work"
    work.mkdir()
    name = name.replace("<tmp>", str(tmp_path))  # an absolute path, inside this test's folder
    out = run_cli(
        "collect", "--preset", "numberline-tiny", "run.output_dir=runs", f"run.name={name}", cwd=work
    )
    assert out.returncode == 1
    assert "'run.name'" in out.stderr and "Traceback" not in out.stderr
    assert list(tmp_path.rglob("*")) == [work]  # not in runs/, not beside it, not anywhere


@pytest.mark.parametrize("name", ["numberline-qwen-lr1e-5", "seed_3", "a.b+c=d@e", "naïve-run"])
def test_ordinary_run_names_are_accepted(name):
    assert load_config("numberline-tiny", overrides=[f"run.name={name}"]).run.name == name


def test_the_message_says_what_is_wrong_and_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        load_config("numberline-tiny", overrides=["run.name=../x"])
    assert "not one folder name (it is a path)" in err.value.message
    assert "letters, digits and _ . - + = @" in err.value.message


def test_the_printed_sbatch_line_pastes_into_a_shell_as_one_path(tmp_path):
    out = run_cli(
        "slurm", "render", "collect", "--preset", "numberline-tiny", "run.output_dir=runs $(touch pwned); x",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (line,) = re.findall(r"submit with `([^`]*)`", " ".join(out.stdout.split("\n")))
    script = tmp_path / "runs $(touch pwned); x/numberline-tiny/slurm/collect.sbatch"
    assert script.is_file() and shlex.split(line) == ["sbatch", str(script)]
    pasted = subprocess.run(["bash", "-c", "printf '%s\\n' " + line.removeprefix("sbatch ")], cwd=tmp_path,
                            capture_output=True, text=True)  # fmt: skip
    assert pasted.stdout == f"{script}\n"
    assert not list(Path(tmp_path).rglob("pwned"))


def test_the_printed_command_of_a_copied_preset_pastes_as_one_path(tmp_path):
    target = tmp_path / "my presets $(touch pwned)" / "mine.yaml"
    target.parent.mkdir()
    out = run_cli("presets", "copy", "numberline-tiny", str(target))
    assert out.returncode == 0, out.stderr
    line = " ".join(out.stdout.split("\n")).split("run it with: ", 1)[1].strip()
    assert shlex.split(line) == ["vlmppo", "ppo", "--preset", str(target)]
    assert not list(Path(tmp_path).rglob("pwned"))
