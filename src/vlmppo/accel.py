"""One place that creates the `accelerate.Accelerator` for the training stages (SFT and PPO).

accelerate keeps its state in a process-wide singleton and refuses a second Accelerator with another
mixed precision ("AcceleratorState has already been initialized and cannot be changed"). `vlmppo
pipeline` runs SFT and PPO in one process, and their precisions may differ (``ppo.mixed_precision=no``),
so a single-process state is reset before a new Accelerator is made. A launched multi-process run
keeps its state: its precision comes from the launch config.
"""

from __future__ import annotations

from typing import Literal

Precision = Literal["no", "bf16"]


def precision_for(setting: str, device: str) -> Precision:
    """``auto`` means bf16 autocast on a GPU and none on the CPU (CPU bf16 matmuls are slow and lossy)."""
    if setting == "auto":
        return "bf16" if device.startswith("cuda") else "no"
    return "bf16" if setting == "bf16" else "no"


def make_accelerator(device: str, mixed_precision: Precision, **kwargs):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision, **kwargs)
