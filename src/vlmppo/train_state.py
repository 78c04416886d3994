"""Trainer state for exact resume (SFT and PPO): RNG streams and counters beside a checkpoint.

``trainer_state.pt`` holds the optimizer, the LR scheduler, every RNG stream the loop draws from
(Python, NumPy, torch CPU and CUDA, and the loop's own ``numpy.random.Generator``s) and the loop's
counters. Restoring all of them is what makes "4 steps straight" and "2 steps, resume, 2 steps" give the
same losses.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmppo.errors import CheckpointError

STATE_FILE = "trainer_state.pt"


def capture_rng() -> dict[str, Any]:
    """The global RNG states: Python, NumPy, torch CPU and (when present) every CUDA device."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_trainer_state(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state`` plus the global RNG states to ``folder/trainer_state.pt`` (inside a checkpoint
    folder that ``save_checkpoint`` is still writing, so it is atomic with the rest)."""
    torch.save({**state, "rng": capture_rng()}, Path(folder) / STATE_FILE)


def load_trainer_state(checkpoint: Path, *, stage: str) -> dict[str, Any]:
    """Read a checkpoint's trainer state; CheckpointError if it is missing or unreadable.

    ``torch.load(weights_only=False)``: the file holds RNG tuples and NumPy generator states, and it
    is one this program wrote into the user's own run directory.
    """
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint} has no {STATE_FILE}, so a {stage} run cannot resume from it.",
            hint=f"Resume from a checkpoint written by `vlmppo {stage}` (runs/<name>/{stage}/checkpoints/…), "
            f"or start it fresh without --resume.",
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn or foreign file: say which one
        raise CheckpointError(
            f"Could not read {path}: {exc}.", hint="Resume from an earlier checkpoint."
        ) from None
    if state.get("stage") != stage:
        raise CheckpointError(
            f"{path} belongs to a {state.get('stage')!r} run, not {stage!r}.",
            hint=f"Resume `vlmppo {stage}` from one of its own checkpoints.",
        )
    return state
