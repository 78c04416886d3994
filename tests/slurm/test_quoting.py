"""Every value that reaches the script is inert: hostile names, paths and options stay data, never code."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from tests.slurm.helpers import recording_python

from vlmppo.config import load_config
from vlmppo.slurm import write_job

HOSTILE = {
    # run.name is refused unless it is a plain folder name (tests/test_run_names.py); the folder above is free.
    "run": {"name": "x", "output_dir": "runs $(touch pwned-dir); touch pwned-dir2"},
    "slurm": {
        "partition": "x; touch pwned-partition",
        "account": "$(touch pwned-account)",
        "qos": "`touch pwned-qos`",
        "mem": None,
        "gpus_per_node": 0,
        "extra_sbatch": ["--comment=it's; touch pwned-extra"],
    },
}


def hostile_job(tmp_path: Path, seeds=None):
    """Render ``collect`` from hostile values, with a recording stand-in for the interpreter."""
    folder = tmp_path / "bin dir; $(touch pwned-python)"
    folder.mkdir()
    python = recording_python(folder, "py'thon")
    values = {**HOSTILE, "slurm": {**HOSTILE["slurm"], "python": str(python)}}
    config = tmp_path / "hostile.yaml"
    config.write_text(yaml.safe_dump(values))
    return write_job(load_config(None, config), "collect", seeds=seeds, cwd=tmp_path), folder


def run_script(job, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    """Execute the rendered script with bash, outside SLURM, in the folder the job would run in."""
    full_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env}
    return subprocess.run(
        ["bash", str(job.script)], cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=60
    )


def pwned(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.rglob("pwned*"))


def test_hostile_values_render_to_a_script_bash_accepts(tmp_path):
    job, _ = hostile_job(tmp_path)
    out = subprocess.run(["bash", "-n", str(job.script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_sbatch_header_values_read_back_exactly_as_given(tmp_path):
    """sbatch reads #SBATCH lines with shell-like quoting; shlex.split does the same here."""
    job, _ = hostile_job(tmp_path)
    options = {}
    for line in job.text.splitlines():
        if line.startswith("#SBATCH "):
            (word,) = shlex.split(line.removeprefix("#SBATCH "))
            key, _, value = word.partition("=")
            options.setdefault(key, value)
    assert options["--partition"] == "x; touch pwned-partition"
    assert options["--account"] == "$(touch pwned-account)"
    assert options["--qos"] == "`touch pwned-qos`"
    assert options["--job-name"] == "x-collect"
    assert options["--comment"] == "it's; touch pwned-extra"
    assert (
        options["--output"] == f"{tmp_path}/runs $(touch pwned-dir); touch pwned-dir2/x/slurm/collect-%j.out"
    )


def test_running_the_script_passes_paths_through_untouched_and_runs_nothing_else(tmp_path):
    job, folder = hostile_job(tmp_path)
    out = run_script(job, tmp_path)
    assert out.returncode == 0, out.stderr
    argv = (folder / "argv.txt").read_text().splitlines()
    assert argv == ["-m", "vlmppo", "collect", "--config", str(job.configs[0])]
    assert job.configs[0].is_file()
    assert pwned(tmp_path) == []


def test_array_task_picks_its_own_config_from_quoted_paths(tmp_path):
    job, folder = hostile_job(tmp_path, seeds=[5, 6])
    out = run_script(job, tmp_path, SLURM_ARRAY_TASK_ID="1")
    assert out.returncode == 0, out.stderr
    argv = (folder / "argv.txt").read_text().splitlines()
    assert argv[-1] == str(job.configs[1]) and job.configs[1].parent.name == "x-seed6"
    assert pwned(tmp_path) == []


@pytest.mark.parametrize("signame", ["USR1", "TERM"])
def test_the_batch_shell_passes_signals_on_to_the_launch(tmp_path, signame):
    """The trap forwards what SLURM sends the batch shell; the launch (here a stub) sees it and exits 0."""
    stub = tmp_path / "stub"
    stub.write_text(
        "#!/bin/bash\n"
        f"trap 'echo got {signame} > {shlex.quote(str(tmp_path / 'got.txt'))}; exit 0' {signame}\n"
        f"touch {shlex.quote(str(tmp_path / 'started'))}\n"
        "for i in $(seq 600); do sleep 0.05; done; exit 3\n"
    )
    stub.chmod(0o755)
    cfg = load_config(
        None, None, [f"run.output_dir={tmp_path}", f"slurm.python={stub}", "slurm.requeue=false"]
    )
    job = write_job(cfg, "ppo", cwd=tmp_path)
    proc = subprocess.Popen(
        ["bash", str(job.script)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for _ in range(200):
            if (tmp_path / "started").exists():
                break
            time.sleep(0.05)
        proc.send_signal(getattr(signal, f"SIG{signame}"))
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert (tmp_path / "got.txt").read_text().strip() == f"got {signame}"
    assert f"got SIG{signame}; passing it on" in err
