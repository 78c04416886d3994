"""Versions and hardware, for bug reports (`vlmppo env`) and for every manifest and checkpoint."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "vlmppo",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "deepspeed",
    "gymnasium",
    "minigrid",
    "pydantic",
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# The command line of this process when the CLI runs it (``vlmppo.cli``); None when vlmppo is used as a library.
_command: list[str] | None = None


def record_command(argv: list[str]) -> None:
    """Remember the CLI's arguments, so that manifests and checkpoints say how to make them again."""
    global _command
    _command = list(argv)


def command_line() -> str | None:
    """``vlmppo ARGS`` as the user typed it (shell-quoted), or None outside the CLI."""
    return None if _command is None else shlex.join(["vlmppo", *_command])


def git_sha(cwd: Path | None = None) -> str | None:
    """The git commit of the working directory's checkout, if any (for manifests)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def environment_report() -> dict[str, str]:
    report = {"python": platform.python_version(), "platform": platform.platform()}
    report.update(package_versions())
    try:
        import torch

        report["cuda"] = torch.version.cuda or "none (CPU build)"
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                report[f"gpu {i}"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
        else:
            report["gpus"] = "none visible"
    except ImportError:
        report["cuda"] = "torch not installed"
    return report


def resolve_device(cfg) -> str:
    """``run.device``, with auto meaning cuda when a GPU is visible (imports torch).

    Also: a tiny model on the CPU runs on one thread unless ``OMP_NUM_THREADS`` says otherwise. Its
    matrices are so small that torch's thread pool only adds synchronisation: measured 40-100x slower with
    the default threads on a 2-core machine.
    """
    import torch

    device = cfg.run.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        apply_gpu_memory_cap()
    if device == "cpu" and cfg.model.path.startswith("tiny:") and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    return device


GPU_MEM_CAP_VAR = "VLMPPO_GPU_MEM_CAP_GB"


def apply_gpu_memory_cap(cap_gb: float | None = None) -> float | None:
    """Cap this process's CUDA allocations at ``cap_gb`` GiB (default: ``$VLMPPO_GPU_MEM_CAP_GB``), so that a
    large card behaves like a small one (an H200 as a 24 GB card): allocations past the cap raise
    ``torch.OutOfMemoryError``. Returns the cap applied, or None when there is none.

    Raises:
        ConfigError: the variable is not a positive number, or asks for more than the card has.
    """
    import torch

    from vlmppo.errors import ConfigError

    if cap_gb is None:
        text = os.environ.get(GPU_MEM_CAP_VAR, "").strip()
        if not text:
            return None
        try:
            cap_gb = float(text)
        except ValueError:
            cap_gb = -1.0
        if not cap_gb > 0:
            raise ConfigError(
                f"{GPU_MEM_CAP_VAR}={text!r} is not a positive number of GiB.",
                hint="Set it to e.g. 24 to emulate a 24 GB card, or unset it.",
            )
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    if cap_gb > total:
        raise ConfigError(
            f"{GPU_MEM_CAP_VAR}={cap_gb:g} GiB is more than this GPU has ({total:.1f} GiB).",
            hint="Lower it, or unset it to use the whole card.",
        )
    torch.cuda.set_per_process_memory_fraction(cap_gb / total)
    return cap_gb
