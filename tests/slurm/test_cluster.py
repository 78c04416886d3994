"""On a real (local, one-node) SLURM cluster, from the CLI: submit, arrays, chains, requeue, status, logs, cancel.

Started by CI with .ci/slurm-up.sh (the `local_slurm` fixture starts it when missing). Each test takes seconds:
small jobs (1 CPU, 500 MB), bounded polling, leftovers cancelled in teardown.
"""

from __future__ import annotations

import json
import shlex
import sys
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import pytest
import yaml
from tests.helpers import run_cli
from tests.slurm.helpers import (
    dry_run_python,
    job_info,
    log_text,
    recording_python,
    signal_batch_shell,
    wait_for_state,
    wait_until,
    write_executable,
)

# One xdist worker runs every job of the one local cluster (jobs of two workers would queue behind each other).
pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]

PRESET = "numberline-tiny"
SMALL = ["slurm.cpus_per_task=1", "slurm.mem=500M", "slurm.time=00:10:00", "slurm.gpus_per_node=0"]


def submit(tmp_path: Path, job_ids: list[str], *args: str) -> list[str]:
    """`vlmppo slurm submit ... --parsable` in ``tmp_path``; returns (and tracks for cleanup) the job ids."""
    out = run_cli("slurm", "submit", *args, "--preset", PRESET, *SMALL, "--parsable", cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    ids = out.stdout.split()
    assert ids and all(i.isdigit() for i in ids), out.stdout
    job_ids.extend(ids)
    return ids


def completed(job_id: str, timeout: float = 180) -> list[dict]:
    """Wait for a final state and require COMPLETED for every task, showing the job's log otherwise."""
    info = wait_for_state(job_id, timeout=timeout)
    failed = [job for job in info if job["JobState"] != "COMPLETED"]
    assert not failed, "\n".join(
        f"{j['JobId']}: {j['JobState']} {j.get('ExitCode')}\n{log_text(j)}" for j in failed
    )
    return info


def started(job: dict) -> datetime:
    return datetime.fromisoformat(job["StartTime"])


def ended(job: dict) -> datetime:
    return datetime.fromisoformat(job["EndTime"])


def test_collect_job_completes_and_writes_its_episodes(tmp_path, job_ids):
    (job_id,) = submit(tmp_path, job_ids, "collect", "collect.episodes=4")
    completed(job_id)
    episodes = tmp_path / "runs/numberline-tiny/collect/episodes.jsonl"
    assert episodes.is_file() and episodes.read_text().strip(), "collect wrote no episodes"
    status = run_cli("slurm", "status", "numberline-tiny", cwd=tmp_path, env={"COLUMNS": "250"})
    assert status.returncode == 0 and job_id in status.stdout and "COMPLETED" in status.stdout, status.stdout


def test_array_of_two_seeds_runs_each_seed_in_its_own_run(tmp_path, job_ids):
    (job_id,) = submit(tmp_path, job_ids, "collect", "collect.episodes=4", "--array-seeds", "1,2")
    assert len(completed(job_id)) == 2
    for seed in (1, 2):
        run = tmp_path / f"runs/numberline-tiny-seed{seed}"
        assert (run / "collect/episodes.jsonl").is_file(), f"seed {seed} wrote no episodes"
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["run"]["seed"] == seed and saved["run"]["name"] == f"numberline-tiny-seed{seed}"


def test_chain_collect_label_preprocess_runs_in_order(tmp_path, job_ids):
    ids = submit(tmp_path, job_ids, "pipeline", "--to", "preprocess", "collect.episodes=4")
    assert len(ids) == 3
    completed(ids[-1], timeout=300)
    jobs = [completed(i, timeout=10)[0] for i in ids]
    for before, after in pairwise(jobs):
        assert started(after) >= ended(before), (before["JobName"], after["JobName"])
    assert (tmp_path / "runs/numberline-tiny/data/train.jsonl").is_file()


def init_from_python(folder: Path) -> Path:
    """A stand-in for ``slurm.python`` that prints the ``ppo.init_from`` of the config its job was given.

    The job runs ``$VLMPPO_PYTHON -m vlmppo STAGE --config PATH ...``: the config is the fifth argument.
    """
    read = 'import sys, yaml; print("init_from:", yaml.safe_load(open(sys.argv[1]))["ppo"]["init_from"])'
    return write_executable(
        folder / "python-init-from",
        f'#!/bin/bash\nexec {shlex.quote(sys.executable)} -c {shlex.quote(read)} "$5"\n',
    )


def test_chained_ppo_starts_from_the_chains_sft_only_when_sft_is_in_the_chain(tmp_path, job_ids):
    """As in `vlmppo pipeline`: with ppo.init_from unset, PPO after SFT starts from it; `--from ppo` does not."""
    with_sft, from_ppo = tmp_path / "with-sft", tmp_path / "from-ppo"
    for folder in (with_sft, from_ppo):
        folder.mkdir()
    python = f"slurm.python={init_from_python(tmp_path)}"
    sft_id, ppo_id = submit(with_sft, job_ids, "pipeline", "--from", "sft", "--to", "ppo", python)
    (alone_id,) = submit(from_ppo, job_ids, "pipeline", "--from", "ppo", "--to", "ppo", python)
    (ppo_after_sft,) = completed(ppo_id)
    (ppo_alone,) = completed(alone_id)
    assert "init_from: sft" in log_text(ppo_after_sft), log_text(ppo_after_sft)
    assert "init_from: None" in log_text(ppo_alone), log_text(ppo_alone)


def status_row(text: str, job_id: str) -> list[str]:
    """The cells of the one row of `vlmppo slurm status`'s table whose job column is ``job_id``."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines()]
    (row,) = [cells for cells in rows if cells and cells[0] == job_id]
    return row


def test_status_of_a_job_id_shows_that_jobs_stage_state_and_node(tmp_path, job_ids):
    stub = write_executable(tmp_path / "python-sleep", "#!/bin/bash\nsleep 120\n")
    (job_id,) = submit(tmp_path, job_ids, "collect", f"slurm.python={stub}")
    (job,) = wait_for_state(job_id, {"RUNNING"}, timeout=60)
    wide = {"COLUMNS": "250"}
    recorded = run_cli("slurm", "status", job_id, cwd=tmp_path, env=wide)
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    _, stage, state, _, node, _ = status_row(recorded.stdout, job_id)
    assert (stage, state, node) == ("collect", "RUNNING", job["NodeList"]), recorded.stdout
    # A job id vlmppo has no record of (another folder, another tool) is still shown, with its state.
    unrecorded = run_cli(
        "slurm", "status", job_id, "--runs-dir", str(tmp_path / "elsewhere"), cwd=tmp_path, env=wide
    )
    assert unrecorded.returncode == 0, unrecorded.stdout + unrecorded.stderr
    assert status_row(unrecorded.stdout, job_id)[1:3] == ["?", "RUNNING"], unrecorded.stdout


# Engine checks that do not need the stages themselves: the job runs the real CLI with --dry-run appended.


def test_engine_runs_a_training_stage_job_and_status_and_logs_show_it(tmp_path, job_ids):
    python = dry_run_python(tmp_path)
    (job_id,) = submit(tmp_path, job_ids, "ppo", f"slurm.python={python}")
    completed(job_id)
    logs = run_cli("slurm", "logs", job_id, cwd=tmp_path)
    assert logs.returncode == 0 and "plan: vlmppo ppo" in logs.stdout, logs.stdout + logs.stderr
    status = run_cli("slurm", "status", cwd=tmp_path, env={"COLUMNS": "250"})
    assert job_id in status.stdout and "COMPLETED" in status.stdout, status.stdout
    row = json.loads((tmp_path / "runs/numberline-tiny/slurm/jobs.jsonl").read_text())
    assert row["job_id"] == job_id and row["stage"] == "ppo" and row["dependency"] is None


def test_engine_chain_starts_each_job_after_the_one_before_succeeded(tmp_path, job_ids):
    python = dry_run_python(tmp_path)
    ids = submit(
        tmp_path, job_ids, "pipeline", "--from", "collect", "--to", "preprocess", f"slurm.python={python}"
    )
    completed(ids[-1], timeout=120)
    jobs = [job_info(i)[0] for i in ids]
    assert [j["JobState"] for j in jobs] == ["COMPLETED"] * 3
    assert [j["Dependency"] for j in jobs] == ["(null)"] * 3  # resolved once the job before succeeded
    for before, after in pairwise(jobs):
        assert started(after) >= ended(before)


def test_engine_array_runs_every_task(tmp_path, job_ids):
    python = dry_run_python(tmp_path)
    (job_id,) = submit(tmp_path, job_ids, "eval", "--array-seeds", "1,2", f"slurm.python={python}")
    info = completed(job_id)
    assert sorted(j["ArrayTaskId"] for j in info) == ["0", "1"]


def test_time_limit_signal_makes_the_job_save_requeue_and_continue(tmp_path, job_ids):
    """USR1 to the batch shell (as --signal=B:USR1 does) reaches the launch; the job requeues and resumes."""
    stub = write_executable(
        tmp_path / "python-stub",
        f"""#!/bin/bash
cd {tmp_path}
if [ -e stopped ]; then echo "resumed after restart $SLURM_RESTART_COUNT: $*"; exit 0; fi
trap 'echo "saved on USR1"; touch stopped; exit 0' USR1
touch running
for i in $(seq 1200); do sleep 0.1; done; exit 3
""",
    )
    (job_id,) = submit(tmp_path, job_ids, "ppo", f"slurm.python={stub}")
    wait_until((tmp_path / "running").exists, "the launch to start", timeout=60)
    signal_batch_shell(job_id, "USR1")
    (job,) = completed(job_id, timeout=120)
    assert job["Restarts"] == "1"
    text = log_text(job)
    assert "saved on USR1" in text and "requeueing job" in text
    assert "resumed after restart 1: -m vlmppo ppo --config" in text and "--resume auto" in text


def test_cancel_stops_a_runs_running_job(tmp_path, job_ids):
    stub = write_executable(tmp_path / "python-sleep", "#!/bin/bash\nsleep 120\n")
    (job_id,) = submit(tmp_path, job_ids, "collect", f"slurm.python={stub}")
    wait_for_state(job_id, {"RUNNING"}, timeout=60)
    out = run_cli("slurm", "cancel", "numberline-tiny", cwd=tmp_path)
    assert out.returncode == 0 and job_id in out.stdout, out.stdout + out.stderr
    wait_for_state(job_id, {"CANCELLED"}, timeout=60)


def test_unknown_partition_is_rejected_with_slurms_message(tmp_path, local_slurm):
    out = run_cli(
        "slurm", "submit", "collect", "--preset", PRESET, *SMALL, "slurm.partition=nope", cwd=tmp_path
    )
    assert out.returncode == 1
    assert "SLURM rejected the job" in out.stderr and "invalid partition" in out.stderr.lower(), out.stderr
    assert "Traceback" not in out.stderr


def test_hostile_names_reach_slurm_as_plain_text(tmp_path, job_ids):
    python = recording_python(tmp_path)
    (job_id,) = submit(
        tmp_path, job_ids, "collect", f"slurm.python={python}", "run.output_dir=runs; touch pwned-dir",
        "run.name=x", "slurm.extra_sbatch=[\"--comment=it's $(touch pwned-comment)\"]",
    )  # fmt: skip
    (job,) = completed(job_id)
    assert job["JobName"] == "x-collect"  # a hostile run.name is refused before it gets here
    assert job["Comment"] == "it's $(touch pwned-comment)"
    argv = (tmp_path / "argv.txt").read_text().splitlines()
    assert argv[-1] == str(tmp_path / "runs; touch pwned-dir/x/config.yaml")
    assert sorted(p.name for p in tmp_path.rglob("pwned*")) == []
