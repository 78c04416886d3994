"""The wheel carries the presets: `vlmppo presets list` works from a fresh venv outside the source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from vlmppo.config.presets import preset_names

pytestmark = pytest.mark.e2e  # builds a wheel into a fresh venv


def test_wheel_ships_presets_and_works_in_a_fresh_venv(tmp_path):
    from tests.helpers import REPO

    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("vlmppo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(
        n.split("/")[-1][:-5] for n in names if n.startswith("vlmppo/presets/") and n.endswith(".yaml")
    )
    assert shipped == preset_names()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # Only what `presets list` needs: the heavy ML stack is not required to browse presets.
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300)
    subprocess.run(
        [*pip, "typer", "rich", "pyyaml", "pydantic"], check=True, capture_output=True, timeout=300
    )
    out = subprocess.run(
        [str(venv / "bin/vlmppo"), "presets", "list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for name in preset_names():
        assert name in out.stdout
