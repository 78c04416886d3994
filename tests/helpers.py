"""Helpers shared by the tests (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run `python -m vlmppo ARGS` in a subprocess, as a user would; returns the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("COLUMNS", "160")
    return subprocess.run(
        [sys.executable, "-m", "vlmppo", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_bench_script(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``bench/<script>`` with ARGS on this CPU (one thread, this tree's ``src`` on the path) and require that
    it exits 0 (the assertion shows the tail of its output); returns the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    done = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    return done


PLUGINS = REPO / "tests" / "plugins"


def install_plugin(package: Path, target: Path) -> Path:
    """Install a plugin package into ``target`` as pip does (its .dist-info carries the entry points), offline,
    without touching the test venv; put ``target`` on PYTHONPATH (or sys.path) to use it. Returns ``target``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--no-index", "--target", str(target), str(package)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return target


def with_path(*folders: Path) -> dict:
    """Environment variables for `run_cli` with ``folders`` first on PYTHONPATH."""
    current = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join([*map(str, folders), *([current] if current else [])])}


def child_processes(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (e.g. a launcher's ranks), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def bf16_autocast_lora_policy(decoder: str):
    """The GPU's setting on the CPU: a tiny Qwen2-VL with bf16 base weights, an fp32 LoRA whose B is moved off
    zero (so the adapter changes the outputs), and an `ActorCritic` that runs its passes under bf16 autocast."""
    import torch

    from vlmppo.config.schema import ModelConfig
    from vlmppo.models import load_model
    from vlmppo.rl.policy import ActorCritic, ValueHead, hidden_size

    torch.manual_seed(0)
    loaded = load_model(
        ModelConfig(family="qwen2-vl", path="tiny:qwen2-vl", dtype="bfloat16"), for_training=True
    )
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.2 * torch.randn_like(p))
    return ActorCritic(
        loaded, ValueHead(hidden_size(loaded.model)), decoder=decoder,
        autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    )  # fmt: skip
