"""Fixtures for the SLURM tests: a running local cluster (started on demand) and job cleanup."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from tests.slurm.helpers import SLURM_UP, cancel_unfinished, slurm_answers


def _why_slurm_cannot_run() -> str | None:
    """A reason only where a local cluster cannot be started here at all; None when it can be tried."""
    if os.name != "posix" or not shutil.which("bash"):
        return "SLURM needs a POSIX machine with bash"
    if os.geteuid() != 0:
        return "starting a local SLURM cluster needs root (run .ci/slurm-up.sh as root first)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it (.ci/slurm-up.sh is Debian-only)"
    return None


@pytest.fixture(scope="session")
def local_slurm():
    """A one-node cluster on localhost: the one CI started, or one started now with .ci/slurm-up.sh."""
    if slurm_answers():
        return
    reason = _why_slurm_cannot_run()
    if reason:
        pytest.skip(f"no local SLURM: {reason}")
    out = subprocess.run(["bash", str(SLURM_UP)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0 or not slurm_answers():
        pytest.fail(
            f".ci/slurm-up.sh could not start the local cluster:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        )


@pytest.fixture
def job_ids(local_slurm):
    """Job ids a test submits; whatever is still queued or running at the end is cancelled."""
    ids: list[str] = []
    yield ids
    cancel_unfinished(ids)
