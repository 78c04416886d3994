"""``--launch`` and ``--gpus`` of ``vlmppo sft`` and ``vlmppo ppo``: start the processes for the user.

``vlmppo ppo --preset P --launch ddp --gpus 2`` prints the exact launcher command, then becomes it (``exec``),
so signals reach the launcher, which forwards them to every rank:

- with GPUs: ``accelerate launch --config_file <shipped ddp|zero2|zero3 file> --num_processes N -m vlmppo ...``;
- without: ``ACCELERATE_USE_CPU=1 python -m torch.distributed.run --standalone --nproc_per_node N -m vlmppo ...``
  (N CPU processes on gloo; ``accelerate launch --cpu`` would silently start one).

A launch that cannot run here (ZeRO without DeepSpeed, ZeRO-3 PPO, more GPUs than visible) fails with one
paragraph before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from typing import Annotated

import typer

LaunchOpt = Annotated[
    str | None,
    typer.Option(
        "--launch",
        help="Start the processes: ddp | zero2 | zero3 (sft also zero3-offload; single = one process). "
        "Sets <stage>.launch and prints the launcher command.",
    ),
]
GpusOpt = Annotated[
    int | None,
    typer.Option(
        "--gpus", min=1, help="Processes to start, one per GPU (CPU processes on gloo where there is no GPU)."
    ),
]


def launch_overrides(stage: str, launch: str | None) -> list[str]:
    return [f"{stage}.launch={launch}"] if launch else []


# Set by torchrun (and accelerate's multi-process launch), by every ``accelerate launch`` (also of one process),
# and by this module's own launch: a process started so is a rank, and never launches again.
LAUNCHED_MARKS = ("RANK", "ACCELERATE_DYNAMO_BACKEND", "VLMPPO_LAUNCHED")


def under_launcher() -> bool:
    """Started by torchrun / ``accelerate launch`` / ``--launch``: this process is one rank."""
    return any(mark in os.environ for mark in LAUNCHED_MARKS)


def is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def wants_launch(cfg, stage: str, gpus: int | None) -> bool:
    """Several processes asked for (``--gpus`` > 1 or ``<stage>.launch`` other than single), from outside a
    launcher."""
    return not under_launcher() and ((gpus or 1) > 1 or getattr(cfg, stage).launch != "single")


def visible_gpus(cfg) -> int:
    if cfg.run.device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count()


def launch_plan(cfg, stage: str, gpus: int | None) -> tuple[list[str], dict[str, str], int]:
    """(argv, extra environment, processes) of the launch of ``vlmppo <stage>`` as this command line asks.

    Raises:
        LaunchError: DeepSpeed missing for zero*, ZeRO-3 PPO, DeepSpeed without GPUs, too many GPUs.
    """
    from vlmppo.errors import LaunchError
    from vlmppo.sft.launching import check_launch, check_ppo_launch, cpu_launch_command, launch_command

    launch = getattr(cfg, stage).launch
    launch = "ddp" if launch == "single" else launch  # --gpus N alone: plain data parallel
    if stage == "ppo":
        check_ppo_launch(launch)
    else:
        check_launch(launch)
    visible = visible_gpus(cfg)
    processes = gpus or max(visible, 1)
    given = sys.argv[sys.argv.index(stage) + 1 :] if stage in sys.argv else []
    args = [*strip_launch_options(given), f"{stage}.launch={launch}"]
    if visible == 0:
        if launch != "ddp":
            raise LaunchError(
                f"{stage}.launch={launch} (DeepSpeed) needs GPUs, and none is visible here.",
                hint=f"Use --launch ddp for {processes} CPU processes on gloo, or run on a GPU machine.",
            )
        return cpu_launch_command(processes, [stage, *args]), {"ACCELERATE_USE_CPU": "1"}, processes
    if processes > visible:
        raise LaunchError(
            f"--gpus {processes} asks for more GPUs than the {visible} visible here.",
            hint=f"Use --gpus {visible} or fewer (CUDA_VISIBLE_DEVICES decides which).",
        )
    with_launch = cfg.model_copy(update={stage: getattr(cfg, stage).model_copy(update={"launch": launch})})
    argv = launch_command(with_launch, processes, extra=args, stage=stage)
    return [sys.executable, "-m", "accelerate.commands.launch", *argv[2:]], {}, processes


def strip_launch_options(args: list[str]) -> list[str]:
    """The command line without ``--launch X`` / ``--gpus N`` (the launched processes are the ranks) and
    ``--dry-run`` (which shows this command)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--launch", "--gpus"):
            skip = True
        elif arg != "--dry-run" and not arg.startswith(("--launch=", "--gpus=")):
            out.append(arg)
    return out


def command_line(argv: list[str], env: dict[str, str]) -> str:
    return " ".join([*(f"{key}={shlex.quote(value)}" for key, value in env.items()), shlex.join(argv)])


def start_processes(cfg, stage: str, gpus: int | None) -> None:
    """Print the launcher command and become it (``exec``): its exit status is this command's."""
    from vlmppo.console import console

    argv, env, _ = launch_plan(cfg, stage, gpus)
    console.print(f"launching: {command_line(argv, env)}", markup=False, highlight=False, soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, {**os.environ, **env, "VLMPPO_LAUNCHED": "1"})


def print_launch(cfg, stage: str, gpus: int | None) -> None:
    """``--dry-run`` with ``--launch``/``--gpus``: the command that would start the processes."""
    from vlmppo.console import console

    argv, env, _ = launch_plan(cfg, stage, gpus)
    console.print(f"would launch: {command_line(argv, env)}", markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def said_once():
    """Under a launcher, a user error is said by rank 0 only: the other ranks exit 1 without repeating it."""
    from vlmppo.errors import VlmppoError

    try:
        yield
    except VlmppoError:
        if is_main_rank():
            raise
        raise typer.Exit(1) from None
