"""Launch configs shipped with the package (``sft.launch``, ``ppo.launch``): where they are, the command line
that uses them, and the DeepSpeed plugin the trainers build from them.

``single`` needs no launcher. ``ddp``, ``zero2``, ``zero3`` and ``zero3-offload`` are accelerate config
files in ``vlmppo/sft/launch/``; run them with ``accelerate launch --config_file <file> -m vlmppo sft ...``
(`launch_command`). The trainer reads the same file to build its ``DeepSpeedPlugin`` with the SFT
config's gradient accumulation and clipping, so the file and the run can never disagree on those.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

from vlmppo.errors import LaunchError

LAUNCH_DIR = Path(__file__).resolve().parent / "launch"
LAUNCHES = ("single", "ddp", "zero2", "zero3", "zero3-offload")
PPO_LAUNCHES = ("single", "ddp", "zero2", "zero3")
# Why PPO has no ZeRO-3 (said where it is refused, and in the README).
PPO_ZERO3 = (
    "ppo.launch=zero3 is not supported: each rollout step samples with `generate` from the whole model, and "
    "under ZeRO-3 every rank holds a shard of the weights only, so every decode step of every layer would "
    "gather them (one all-gather per layer per token)."
)


def launch_config_path(name: str) -> Path | None:
    """The shipped accelerate config file of launch ``name``; None for ``single`` (no launcher needed).

    SLURM rendering can pass this path to ``accelerate launch --config_file``.
    """
    if name not in LAUNCHES:
        raise LaunchError(f"Unknown sft.launch {name!r}.", hint=f"Choose one of: {', '.join(LAUNCHES)}.")
    return None if name == "single" else LAUNCH_DIR / f"{name}.yaml"


def uses_deepspeed(name: str) -> bool:
    return name.startswith("zero")


def check_launch(name: str, stage: str = "sft") -> None:
    """LaunchError when launch ``name`` of ``stage`` cannot run in this environment (DeepSpeed not installed)."""
    launch_config_path(name)
    if uses_deepspeed(name) and importlib.util.find_spec("deepspeed") is None:
        raise LaunchError(
            f"{stage}.launch={name} uses DeepSpeed, which is not installed in this environment.",
            hint=f"pip install 'vlmppo[deepspeed]' on the GPU machine, or use {stage}.launch=single (one process) "
            f"or {stage}.launch=ddp.",
        )


def check_ppo_launch(name: str, world: int = 1) -> None:
    """LaunchError for a PPO launch that cannot run: ZeRO-3 (``PPO_ZERO3``), or ZeRO-2 without DeepSpeed.
    ``world``: processes already started; one process ignores the launch (nothing to share)."""
    if name == "zero3":
        raise LaunchError(
            PPO_ZERO3, hint="Use ppo.launch=zero2 (optimizer state and gradients sharded) or ddp."
        )
    if world > 1 or name != "single":
        check_launch(name, "ppo")


def launch_command(
    cfg,
    num_processes: int,
    *,
    config_file: str | Path | None = None,
    extra: list[str] | None = None,
    stage: str = "sft",
) -> list[str]:
    """The command line that runs ``vlmppo <stage>`` with ``cfg.<stage>.launch`` on ``num_processes`` GPUs.

    Args:
        cfg: The resolved config (its ``sft.launch`` or ``ppo.launch`` picks the accelerate config file).
        num_processes: Processes (GPUs) on this machine.
        config_file: The resolved run config to pass as ``--config`` (e.g. ``runs/<name>/config.yaml``).
        extra: More arguments for ``vlmppo sft`` (e.g. ``["--resume", "auto"]``).

    Returns:
        argv, e.g. ``["accelerate", "launch", "--config_file", ".../zero2.yaml", "--num_processes", "8",
        "-m", "vlmppo", "sft", "--config", "runs/x/config.yaml"]``. ``single`` gives plain ``vlmppo sft``.
    """
    path = launch_config_path(getattr(cfg, stage).launch)
    tail = [stage, *(["--config", str(config_file)] if config_file else []), *(extra or [])]
    if path is None:
        return ["vlmppo", *tail]
    return [
        "accelerate", "launch", "--config_file", str(path), "--num_processes", str(num_processes),
        "-m", "vlmppo", *tail,
    ]  # fmt: skip


def cpu_launch_command(num_processes: int, args: list[str]) -> list[str]:
    """``num_processes`` CPU processes on gloo running ``vlmppo <args>`` (run with ``ACCELERATE_USE_CPU=1``).

    torchrun, not ``accelerate launch --cpu``: the latter silently starts one process whatever
    ``--num_processes`` says.
    """
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_processes),
        "-m", "vlmppo", *args,
    ]  # fmt: skip


def deepspeed_plugin(name: str, *, grad_accum: int, max_grad_norm: float, batch_size: int):
    """The accelerate ``DeepSpeedPlugin`` of launch ``name`` (None when it does not use DeepSpeed).

    ZeRO stage and offload come from the shipped file; accumulation and clipping from the SFT config.
    No ``scheduler``/``optimizer`` section is given to DeepSpeed: the trainer's AdamW and LR curve are used.
    """
    if not uses_deepspeed(name):
        return None
    check_launch(name)
    from accelerate.utils import DeepSpeedPlugin

    ds = yaml.safe_load(launch_config_path(name).read_text())["deepspeed_config"]
    plugin = DeepSpeedPlugin(
        zero_stage=ds["zero_stage"],
        offload_optimizer_device=ds.get("offload_optimizer_device", "none"),
        offload_param_device=ds.get("offload_param_device", "none"),
        zero3_init_flag=ds.get("zero3_init_flag", False),
        zero3_save_16bit_model=ds.get("zero3_save_16bit_model", False),
        gradient_accumulation_steps=grad_accum,
        gradient_clipping=max_grad_norm,
    )
    # No dataloader goes through accelerate.prepare, so DeepSpeed cannot infer the micro-batch size.
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size
    return plugin
