"""The state of a PPO run: what ``start_run`` builds, the loop works with and a checkpoint saves.

Its own module so that the start (``rl/startup.py``) and the checkpoints (``rl/checkpointing.py``), which call
each other, both name it without importing each other at module level.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vlmppo.config import Config
from vlmppo.rl.policy import ActorCritic
from vlmppo.rl.update import BadMinibatchGuard

if TYPE_CHECKING:
    from accelerate import Accelerator

    from vlmppo.envs.vec_env import VecEnv
    from vlmppo.rl.history import HistoryWindows


@dataclass
class PpoRun:
    """What the PPO loop works with; a checkpoint saves all of it but the config and the policy's frozen parts.

    Attributes:
        out: ``runs/<name>/ppo``.
        accelerator: The run's ``accelerate.Accelerator`` (bf16 autocast on a GPU, backward, clipping).
        rng: The minibatch order's generator.
        vec, obs, infos: The vector env and its current observations (pickled mid-episode on save).
        history: Each env's window of earlier turns (``env.history`` > 0), else None.
        recent_episodes: The last finished episodes (``rollout/*`` rates average over them).
        total_updates: Updates the whole run makes.
        update: The update in progress (after a resume: the checkpoint's, which the loop continues from).
        env_steps: Env steps taken so far.
        checkpoint: The newest checkpoint written (or resumed from); ``saved_update`` its update.
        resume_changes: Settings changed since the resumed checkpoint (``key: old -> new``).
        world, rank: Processes of a launched data-parallel run and this one's index (1 and 0 without a
            launcher); only rank 0 writes logs, samples and checkpoints.
        scorer: The DDP/DeepSpeed-wrapped ``ScoringModule`` the update scores through when ``world`` > 1.
    """

    cfg: Config
    out: Path
    device: str
    accelerator: Accelerator
    policy: ActorCritic
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    rng: np.random.Generator
    guard: BadMinibatchGuard
    total_updates: int
    vec: VecEnv | None = None
    obs: list[np.ndarray] = field(default_factory=list)
    infos: list[dict] = field(default_factory=list)
    history: HistoryWindows | None = None
    recent_episodes: deque = field(default_factory=deque)
    update: int = 0
    env_steps: int = 0
    checkpoint: Path | None = None
    saved_update: int = 0
    resume_changes: list[str] = field(default_factory=list)
    world: int = 1
    rank: int = 0
    scorer: torch.nn.Module | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0
