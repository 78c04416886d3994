"""Rendered sbatch files: golden files for the shapes users submit, each accepted by `bash -n`.

Regenerate the goldens after an intended change with VLMPPO_UPDATE_GOLDEN=1 and read the diff.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import run_cli
from tests.slurm.helpers import fake_slurm

from vlmppo.config import load_config
from vlmppo.errors import SlurmError
from vlmppo.slurm import pipeline_stages, submit_chain, write_job

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
PRESET = str(HERE / "cluster.yaml")
PROJECT = "/home/user/project"  # what the test's temp folder is shown as in the goldens


def normalised(text: str, tmp_path: Path) -> str:
    return text.replace(str(tmp_path), PROJECT)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("VLMPPO_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; create it with VLMPPO_UPDATE_GOLDEN=1"
    assert text == path.read_text(), (
        f"{name} differs from its golden file; VLMPPO_UPDATE_GOLDEN=1 rewrites it"
    )


def bash_accepts(text: str) -> None:
    out = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


CASES = {
    "ppo-1gpu.sbatch": ("ppo", [], None),
    "ppo-1node-8gpu.sbatch": ("ppo", ["slurm.gpus_per_node=8"], None),
    "ppo-2node-8gpu.sbatch": ("ppo", ["slurm.nodes=2", "slurm.gpus_per_node=8"], None),
    "sft-2node-8gpu-torchrun.sbatch": (
        "sft",
        ["slurm.nodes=2", "slurm.gpus_per_node=8", "slurm.launcher=torchrun"],
        None,
    ),
    "sft-array-3-seeds.sbatch": ("sft", [], [1, 2, 3]),
    "collect-cpu.sbatch": (
        "collect",
        ["slurm.gpus_per_node=0", "slurm.setup=[]", "slurm.requeue=false"],
        None,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_rendered_script_matches_golden_and_bash_accepts_it(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stage, overrides, seeds = CASES[name]
    job = write_job(load_config(PRESET, None, overrides), stage, seeds=seeds)
    assert job.script.read_text() == job.text
    bash_accepts(job.text)
    check_golden(name, normalised(job.text, tmp_path))


def test_pipeline_submits_a_chain_of_afterok_jobs_and_records_each(tmp_path, monkeypatch):
    fake = fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    subs = submit_chain(load_config(PRESET), pipeline_stages(), after="100")
    assert [s.job_id for s in subs] == ["101", "102", "103", "104", "105", "106"]
    rows = [json.loads(line) for line in (tmp_path / "runs/golden/slurm/jobs.jsonl").read_text().splitlines()]
    for row in rows:
        assert row.pop("submitted")  # a time stamp: present, not compared
    for sub in subs:
        bash_accepts(sub.job.text)
    calls = (fake / "calls.txt").read_text()
    check_golden(
        "pipeline-chain.txt", normalised(calls + "\n".join(json.dumps(r) for r in rows) + "\n", tmp_path)
    )


def test_launch_uses_the_rendering_interpreter_when_slurm_python_is_unset(tmp_path):
    cfg = load_config(PRESET, None, ["slurm.python=null", f"run.output_dir={tmp_path}"])
    job = write_job(cfg, "eval", cwd=tmp_path)
    assert f"VLMPPO_PYTHON={shlex.quote(sys.executable)}\n" in job.text
    assert 'exec "$VLMPPO_PYTHON" -m vlmppo eval --config "$VLMPPO_CONFIG"\n' in job.text  # no --resume


def test_script_names_no_hyperparameter_only_the_resolved_config(tmp_path):
    cfg = load_config(PRESET, None, ["ppo.lr=0.000123", "ppo.clip_range=0.37", f"run.output_dir={tmp_path}"])
    job = write_job(cfg, "ppo", cwd=tmp_path)
    assert "0.000123" not in job.text and "0.37" not in job.text
    saved = load_config(None, job.configs[0])
    assert saved.ppo.lr == 0.000123 and saved.ppo.clip_range == 0.37


def test_array_tasks_get_their_own_run_and_seed(tmp_path):
    job = write_job(
        load_config(PRESET, None, [f"run.output_dir={tmp_path}"]), "ppo", seeds=[7, 8], cwd=tmp_path
    )
    saved = [load_config(None, path) for path in job.configs]
    assert [(c.run.name, c.run.seed) for c in saved] == [("golden-seed7", 7), ("golden-seed8", 8)]
    assert job.script == tmp_path / "golden/slurm/ppo.sbatch"


def test_own_template_is_used_and_unknown_placeholders_are_errors(tmp_path):
    template = tmp_path / "mine.sbatch"
    template.write_text(
        "#!/bin/bash\n{{ sbatch }}\n#SBATCH --comment=mine\n{{ run }}\nlaunch() {\n{{ launch }}\n}\nlaunch\n"
    )
    cfg = load_config(PRESET, None, [f"slurm.template={template}", f"run.output_dir={tmp_path}"])
    text = write_job(cfg, "collect", cwd=tmp_path).text
    assert "#SBATCH --comment=mine" in text and "-m vlmppo collect" in text
    template.write_text("{{ sbatch }}\n{{ run }}\n{{ launch }}\n{{ hyperparameters }}\n")
    with pytest.raises(SlurmError, match=r"unknown placeholder \{\{ hyperparameters \}\}"):
        write_job(cfg, "collect", cwd=tmp_path)


def test_render_command_writes_config_and_script_and_prints_both(tmp_path):
    out = run_cli("slurm", "render", "ppo", "--preset", PRESET, "ppo.lr=0.0005", f"run.output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    config, script = tmp_path / "golden/config.yaml", tmp_path / "golden/slurm/ppo.sbatch"
    assert load_config(None, config).ppo.lr == 0.0005
    assert str(config) in out.stdout and str(script) in out.stdout
    assert "#SBATCH --signal=B:USR1@300" in out.stdout and "lr: 0.0005" in out.stdout


def test_render_out_option_writes_the_script_where_asked(tmp_path):
    target = tmp_path / "job.sh"
    out = run_cli(
        "slurm", "render", "collect", "--preset", PRESET, f"run.output_dir={tmp_path}", "--out", str(target)
    )
    assert out.returncode == 0, out.stderr
    assert target.read_text().startswith("#!/bin/bash")
    assert not (tmp_path / "golden/slurm/collect.sbatch").exists()
