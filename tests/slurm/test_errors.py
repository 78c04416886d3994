"""Clear errors, without tracebacks: no sbatch, a job SLURM refuses, an impossible resource request."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.helpers import run_cli
from tests.slurm.helpers import fake_scontrol, fake_slurm, without_slurm_on_path

from vlmppo.config import load_config
from vlmppo.errors import ConfigError, SlurmError
from vlmppo.slurm import parse_seeds, pipeline_stages, submit_chain, submit_stage, write_job
from vlmppo.slurm.query import log_files, parse_scontrol, records
from vlmppo.slurm.request import time_limit_seconds

PRESET = str(Path(__file__).parent / "cluster.yaml")


def cfg_with(tmp_path, *overrides):
    return load_config(PRESET, None, [f"run.output_dir={tmp_path}", *overrides])


def test_submit_without_sbatch_says_slurm_is_missing_and_how_to_get_it(tmp_path):
    out = run_cli(
        "slurm", "submit", "collect", "--preset", PRESET, f"run.output_dir={tmp_path}",
        env={"PATH": without_slurm_on_path()},
    )  # fmt: skip
    assert out.returncode == 1
    assert "`sbatch` was not found on PATH" in out.stderr and "apt-get install slurm-client" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "golden").exists()  # nothing written for a job that cannot be submitted


def test_rejected_job_shows_sbatchs_own_message(tmp_path, monkeypatch):
    fake = fake_slurm(
        tmp_path / "bin", fail_on_call=1, message="sbatch: error: invalid partition specified: gpu"
    )
    out = run_cli(
        "slurm", "submit", "ppo", "--preset", PRESET, f"run.output_dir={tmp_path}",
        env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    assert out.returncode == 1, out.stdout
    assert "SLURM rejected the job" in out.stderr and "invalid partition specified: gpu" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "golden/slurm/jobs.jsonl").exists()


def test_a_refused_job_in_a_chain_cancels_the_jobs_before_it(tmp_path, monkeypatch):
    fake = fake_slurm(tmp_path / "bin", fail_on_call=3, message="sbatch: error: QOSMaxGRESPerUser")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(SlurmError, match="QOSMaxGRESPerUser") as err:
        submit_chain(cfg_with(tmp_path), pipeline_stages(), cwd=tmp_path)
    assert "(101, 102) were cancelled" in err.value.message
    assert (fake / "calls.txt").read_text().splitlines()[-1] == "scancel 101 102"


@pytest.mark.parametrize(
    ("overrides", "stage", "expected"),
    [
        (["slurm.nodes=2", "slurm.gpus_per_node=0"], "ppo", "a run over several nodes needs GPUs"),
        (["slurm.time=tomorrow"], "sft", "slurm.time 'tomorrow' is not a SLURM time limit"),
        (["slurm.time=00:05:00", "slurm.signal_grace_s=300"], "ppo", "is not shorter than slurm.time"),
        (["slurm.mem=lots"], "collect", "slurm.mem 'lots' is not a SLURM memory size"),
        (["slurm.extra_sbatch=[constraint=h100]"], "eval", "is not an sbatch option"),
        (['slurm.partition="gpu\\nrm -rf ~"'], "ppo", "holds a line break"),
        (["slurm.gpus_per_node=2", "ppo.launch=zero3"], "ppo", "ppo.launch=zero3 is not supported"),
        (
            ["slurm.gpus_per_node=0", "slurm.cpu_processes=2", "ppo.launch=zero2"],
            "ppo",
            "DeepSpeed needs GPUs",
        ),
    ],
)
def test_impossible_requests_are_refused_before_anything_is_written(tmp_path, overrides, stage, expected):
    with pytest.raises(SlurmError, match="Impossible SLURM request") as err:
        write_job(cfg_with(tmp_path, *overrides), stage, cwd=tmp_path)
    assert expected in err.value.message
    assert not (tmp_path / "golden").exists()


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(SlurmError, match="3 problems"):
        write_job(
            cfg_with(tmp_path, "slurm.nodes=2", "slurm.gpus_per_node=0", "slurm.mem=x", "slurm.time=y"), "ppo"
        )


def test_more_gpus_than_the_nodes_have_is_a_config_error_on_the_command_line(tmp_path):
    with pytest.raises(ConfigError, match="max_gpus_per_node"):
        cfg_with(tmp_path, "slurm.gpus_per_node=16")
    out = run_cli(
        "slurm", "render", "ppo", "--preset", PRESET, "slurm.gpus_per_node=16", f"run.output_dir={tmp_path}"
    )
    assert out.returncode == 1 and "max_gpus_per_node" in out.stderr and "Traceback" not in out.stderr


def test_cli_shows_an_impossible_request_as_one_message(tmp_path):
    out = run_cli(
        "slurm", "render", "ppo", "--preset", PRESET, "slurm.nodes=2", "slurm.gpus_per_node=0",
        f"run.output_dir={tmp_path}",
    )  # fmt: skip
    assert out.returncode == 1
    assert "needs GPUs" in out.stderr and "Traceback" not in out.stderr


def test_a_zero3_ppo_job_is_refused_at_render_time_in_one_paragraph_and_zero2_is_not(tmp_path):
    overrides = ["slurm.nodes=2", "slurm.gpus_per_node=8", f"run.output_dir={tmp_path}"]
    out = run_cli("slurm", "render", "ppo", "--preset", PRESET, *overrides, "ppo.launch=zero3")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    err = " ".join(out.stderr.split())
    assert "ppo.launch=zero3 is not supported" in err and "use ppo.launch=zero2 or ddp" in err
    assert not (tmp_path / "golden").exists()  # nothing written
    job = write_job(cfg_with(tmp_path, *overrides[:2], "ppo.launch=zero2"), "ppo", cwd=tmp_path)
    assert "--num_processes 16" in job.text and "/sft/launch/zero2.yaml" in job.text  # PPO on 16 GPUs


def test_cpu_processes_with_a_deepspeed_launch_are_refused(tmp_path):
    cfg = cfg_with(tmp_path, "slurm.gpus_per_node=0", "slurm.cpu_processes=2", "sft.launch=zero2")
    with pytest.raises(SlurmError, match="DeepSpeed needs GPUs"):
        write_job(cfg, "sft", cwd=tmp_path)


def test_single_process_stages_ask_for_one_node_and_say_so(tmp_path):
    job = write_job(cfg_with(tmp_path, "slurm.nodes=4", "slurm.gpus_per_node=8"), "label", cwd=tmp_path)
    assert "#SBATCH --nodes=1\n" in job.text and "srun" not in job.text
    assert job.notes and "asks for 1 node" in job.notes[0]


@pytest.mark.parametrize("text", ["1,x", "", "1,1"])
def test_bad_array_seeds_are_refused(text):
    with pytest.raises(SlurmError):
        parse_seeds(text)


def test_after_takes_only_a_job_id(tmp_path, monkeypatch):
    fake = fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(SlurmError, match="not a SLURM job id"):
        submit_stage(cfg_with(tmp_path), "collect", after="12; rm -rf ~", cwd=tmp_path)


def test_pipeline_from_after_to_is_refused():
    with pytest.raises(SlurmError, match="comes after"):
        pipeline_stages("ppo", "collect")
    assert pipeline_stages("sft", "eval") == ["sft", "ppo", "eval"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 1800),
        ("30:15", 1815),
        ("01:00:00", 3600),
        ("2-00", 172800),
        ("1-02:03:04", 93784),
        ("INFINITE", None),
    ],
)
def test_slurm_time_formats_are_understood(text, seconds):
    assert time_limit_seconds(text) == seconds


def test_scontrol_lines_parse_with_spaces_in_values():
    line = "JobId=12 ArrayJobId=11 ArrayTaskId=1 JobName=x; rm -rf ~-ppo UserId=root(0) JobState=RUNNING Reason=None"
    (job,) = parse_scontrol(line + "\n")
    assert job["JobName"] == "x; rm -rf ~-ppo" and job["JobState"] == "RUNNING" and job["ArrayTaskId"] == "1"


def test_unknown_run_is_a_clear_error(tmp_path):
    with pytest.raises(SlurmError, match="No SLURM jobs recorded for run 'nope'"):
        records("nope", tmp_path)


def test_logs_of_an_array_are_every_tasks_files(tmp_path, monkeypatch):
    fake = fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    sub = submit_stage(cfg_with(tmp_path), "collect", seeds=[3, 4], cwd=tmp_path)
    for task in (0, 1):
        (sub.job.slurm_dir / f"collect-{sub.job_id}_{task}.out").write_text(f"task {task}\n")
    files = log_files("golden", tmp_path)
    assert [f.name for f in files] == [f"collect-{sub.job_id}_0.out", f"collect-{sub.job_id}_1.out"]
    assert [f.name for f in log_files(f"{sub.job_id}_1", tmp_path)] == [f"collect-{sub.job_id}_1.out"]


def test_status_shows_state_node_and_the_runs_last_metrics_line(tmp_path):
    fake = fake_slurm(tmp_path / "bin")
    fake_scontrol(
        fake, "JobId=101 JobName=golden-ppo JobState=RUNNING Reason=None RunTime=00:01:02 NodeList=gpu07"
    )
    env = {"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "250"}
    out = run_cli("slurm", "submit", "ppo", "--preset", PRESET, f"run.output_dir={tmp_path}", env=env)
    assert out.returncode == 0 and "submitted job 101: vlmppo ppo" in out.stdout, out.stdout + out.stderr
    metrics = tmp_path / "golden/ppo/metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(
        '{"update": 1, "train/approx_kl": 0.5}\n{"update": 2, "train/approx_kl": 0.0123456}\n{"upd'
    )
    out = run_cli("slurm", "status", "golden", "--runs-dir", str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if "101" in line)
    for shown in ("ppo", "RUNNING", "00:01:02", "gpu07", "update=2", "train/approx_kl=0.01235"):
        assert shown in row, row
