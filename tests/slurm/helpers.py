"""Helpers for the SLURM tests: stub interpreters, fake SLURM commands, and polling a real local cluster.

The preemption test (``scontrol requeue`` while PPO runs) uses ``wait_for_state``, ``requeue`` and
``job_info``; keep them small and bounded so a stuck cluster fails a test instead of hanging CI.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vlmppo.slurm.query import FINAL_STATES, parse_scontrol

REPO = Path(__file__).resolve().parents[2]
SLURM_UP = REPO / ".ci" / "slurm-up.sh"
POLL_S = 0.25


def write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def dry_run_python(folder: Path) -> Path:
    """A stand-in for ``slurm.python`` that runs the real vlmppo with ``--dry-run`` appended (exits 0, fast).

    Lets the engine's submit/wait/status path run for real on the cluster before every stage is built.
    """
    return write_executable(
        folder / "python-dry-run", f'#!/bin/bash\nexec {shlex.quote(sys.executable)} "$@" --dry-run\n'
    )


def recording_python(folder: Path, name: str = "python-recording") -> Path:
    """A stand-in for ``slurm.python`` that writes its arguments, one per line, to ``<folder>/argv.txt``."""
    out = shlex.quote(str(folder / "argv.txt"))
    return write_executable(folder / name, f'#!/bin/bash\nprintf "%s\\n" "$@" > {out}\n')


def fake_slurm(folder: Path, *, fail_on_call: int | None = None, message: str = "") -> Path:
    """Fake ``sbatch`` (ids 101, 102, ...) and ``scancel`` that log their argv to ``<folder>/calls.txt``.

    ``fail_on_call``: the sbatch call number (1-based) that fails with ``message`` on stderr, exit 1.
    """
    folder.mkdir(parents=True, exist_ok=True)
    calls = shlex.quote(str(folder / "calls.txt"))
    count = shlex.quote(str(folder / "count"))
    fail = fail_on_call or 0
    write_executable(
        folder / "sbatch",
        f"""#!/bin/bash
n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo "$n" > {count}
echo "sbatch $*" >> {calls}
if [ "$n" -eq {fail} ]; then echo {shlex.quote(message)} >&2; exit 1; fi
echo "$((100 + n))"
""",
    )
    write_executable(folder / "scancel", f'#!/bin/bash\necho "scancel $*" >> {calls}\n')
    return folder


def fake_scontrol(folder: Path, *lines: str) -> Path:
    """A fake ``scontrol show job -o ID`` printing those of ``lines`` whose JobId or ArrayJobId is ID."""
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "scontrol-jobs.txt"
    table.write_text("".join(line + "\n" for line in lines))
    pattern = '"(^| )(JobId|ArrayJobId)=$4( |\\$)"'
    write_executable(folder / "scontrol", f"#!/bin/bash\ngrep -E {pattern} {shlex.quote(str(table))}\n")
    return folder


def slurm_answers() -> bool:
    """True when the local cluster answers and has a node that takes jobs."""
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and any(s.startswith(("idle", "mix", "alloc")) for s in out.stdout.split())


def job_info(job_id: str) -> list[dict[str, str]]:
    """``scontrol show job -o``: one dict per job or array task (empty once slurmctld forgot the job)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30
    )
    return parse_scontrol(out.stdout) if out.returncode == 0 else []


def wait_for_state(
    job_id: str, states: set[str] | None = None, *, timeout: float = 120
) -> list[dict[str, str]]:
    """Poll until every task of ``job_id`` is in one of ``states`` (default: any final state); bounded."""
    wanted = states or FINAL_STATES
    deadline = time.monotonic() + timeout
    info: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        info = job_info(job_id)
        if info and all(job.get("JobState") in wanted for job in info):
            return info
        time.sleep(POLL_S)
    shown = [(job.get("JobId"), job.get("JobState"), job.get("Reason")) for job in info]
    raise AssertionError(f"job {job_id} not in {sorted(wanted)} after {timeout:.0f} s: {shown}")


def wait_until(check, what: str, *, timeout: float = 60) -> None:
    """Poll ``check()`` until it is true (e.g. a checkpoint or N metrics lines exist); bounded."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def requeue(job_id: str) -> None:
    """Requeue a running job as preemption does: SLURM signals it, then puts it back in the queue."""
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True, text=True, timeout=30)


def signal_batch_shell(job_id: str, signame: str = "USR1") -> None:
    """Send a signal to the job's batch shell only, as ``--signal=B:USR1@grace`` does before the time limit."""
    subprocess.run(
        ["scancel", "--batch", f"--signal={signame}", job_id],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )


def cancel_unfinished(job_ids: list[str]) -> None:
    """Teardown: cancel what a failed test left queued or running."""
    live = [j for j in job_ids if any(job.get("JobState") not in FINAL_STATES for job in job_info(j))]
    if live:
        subprocess.run(["scancel", *live], capture_output=True, timeout=30)


def log_text(job: dict[str, str]) -> str:
    """The job's stdout and stderr files, for assertion messages."""
    parts = []
    for key in ("StdOut", "StdErr"):
        path = Path(job.get(key, ""))
        if path.is_file():
            parts.append(f"--- {path}\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)


def without_slurm_on_path() -> str:
    """A PATH that keeps the basic tools but has no sbatch."""
    keep = [
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not (Path(p) / "sbatch").exists()
    ]
    return os.pathsep.join(keep)
