"""Plain `pytest` runs CI's set (every tier but slow and gpu); a `-m` on the command line replaces it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tests.helpers import REPO

pytestmark = pytest.mark.e2e  # runs pytest in a subprocess

TIERS = """
import pytest

def test_plain():
    pass

@pytest.mark.slow
def test_slow():
    pass

@pytest.mark.gpu
def test_gpu():
    pass

@pytest.mark.e2e
def test_e2e():
    pass
"""


def collected(tmp_path, *args: str) -> list[str]:
    (tmp_path / "test_tiers.py").write_text(TIERS)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path),
         "--collect-only", "-q", "-p", "no:cacheprovider", *args, str(tmp_path / "test_tiers.py")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode in (0, 5), out.stdout + out.stderr  # 5: every test deselected
    return sorted(line.split("::")[1] for line in out.stdout.splitlines() if "::" in line)


def test_plain_pytest_leaves_out_slow_and_gpu_tests(tmp_path):
    assert collected(tmp_path) == ["test_e2e", "test_plain"]


def test_a_marker_expression_on_the_command_line_replaces_the_default(tmp_path):
    assert collected(tmp_path, "-m", "slow") == ["test_slow"]
    assert collected(tmp_path, "-m", "") == ["test_e2e", "test_gpu", "test_plain", "test_slow"]
