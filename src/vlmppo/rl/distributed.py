"""Data-parallel PPO: where the ranks of a launched run (torchrun / ``accelerate launch``) meet.

Each rank runs its own ``env.n_envs`` envs (episode seeds offset by rank), its own rollouts and scoring, and
updates on its own rollout's minibatches. They agree on four things only:

- the advantage statistics (``all_reduced_moments``: sums all-reduced, so every rank normalises by the mean
  and std of the whole global rollout);
- the gradients: DDP (or DeepSpeed) averages them in the backward pass of the last micro-batch of each
  minibatch; ``GradientSync`` keeps the earlier micro-batches local (``no_sync``), else every micro-batch
  would be all-reduced;
- the metrics (``reduce_metrics``), before rank 0 logs them;
- a stop (``agree_stop``): a SIGTERM/SIGUSR1 on any rank stops every rank after the same update.

In one process every function here is the identity, so a single-process run is exactly what it was.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from accelerate import Accelerator

    from vlmppo.rl.policy import ActorCritic, Sampled

# Metrics summed over ranks (counts and throughputs of the whole run); the slowest rank sets the times.
SUMMED = ("rollout/episodes", "time/env_steps_per_s", "time/steady_env_steps_per_s", "time/gen_tokens_per_s")
SLOWEST = (
    "time/rollout_s", "time/update_s", "time/refresh_s", "time/capture_s", "time/capture_steps", "time/values_s",
    "sys/gpu_mem_peak_gb", "sys/gpu_mem_peak_rollout_gb", "sys/gpu_mem_peak_update_gb",
)  # fmt: skip
# Counters every rank holds the same value of.
SHARED = ("update", "env_steps", "train/lr", "train/lr_value_head", "train/optimizer_steps")


def world_of(accelerator: Accelerator | None) -> int:
    return 1 if accelerator is None else accelerator.num_processes


def env_seed(seed: int, rank: int, n_envs: int) -> int:
    """The first env seed of ``rank``: env i of rank r is seeded ``seed + r·n_envs + i``, so no two ranks of a
    run play the same episode, and rank 0 plays what a one-process run plays."""
    return seed + rank * n_envs


def all_reduced_moments(accelerator: Accelerator):
    """``advantage_moments`` over every rank's advantages: mean and population std of the global rollout,
    from all-reduced sums (float64: the sum of squares of large rollouts loses digits in float32). One
    process: ``advantage_moments`` itself."""
    from vlmppo.rl.gae import advantage_moments

    if world_of(accelerator) == 1:
        return advantage_moments

    def moments(adv: Tensor) -> tuple[Tensor, Tensor]:
        flat = adv.detach().reshape(-1).to(torch.float64)
        sums = torch.stack(
            [flat.sum(), (flat * flat).sum(), torch.tensor(float(flat.numel()), dtype=torch.float64)]
        )
        if accelerator.num_processes > 1:
            sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
        total, squares, count = sums.tolist()
        mean = total / count
        variance = max(squares / count - mean * mean, 0.0)
        return torch.tensor(mean, dtype=torch.float32), torch.tensor(math.sqrt(variance), dtype=torch.float32)

    return moments


class ScoringModule(nn.Module):
    """The trained parts of the actor-critic (the VLM with its adapter, and the value head) as one module
    whose forward is ``ActorCritic.score``: DDP (or DeepSpeed) wraps this, so the update's forward goes
    through the wrapper, which is what arms its gradient all-reduce for the following backward."""

    def __init__(self, policy: ActorCritic):
        super().__init__()
        self.policy = policy
        self.model, self.value_head = policy.loaded.model, policy.value_head

    def forward(self, sampled: Sampled, temperature: float, return_logits: bool = False):
        return self.policy.score(sampled, temperature=temperature, return_logits=return_logits)


class GradientSync:
    """Gradient accumulation under DDP: all-reduce once per minibatch, not once per micro-batch.

    ``with sync.micro(last):`` around each micro-batch's forward and backward; every micro-batch but the
    last runs under the wrapper's ``no_sync``, whose gradients stay local and are summed into the last
    one's, which DDP then averages over ranks. One process (or an unwrapped module): nothing to do.
    """

    def __init__(self, wrapped: nn.Module | None):
        self.wrapped = wrapped

    @contextlib.contextmanager
    def micro(self, last: bool) -> Iterator[None]:
        no_sync = getattr(self.wrapped, "no_sync", None)
        if last or no_sync is None:
            yield
        else:
            with no_sync():
                yield


def reduce_metrics(accelerator: Accelerator | None, metrics: dict) -> dict:
    """Rank 0's row of ``metrics.jsonl`` from every rank's: rates and losses averaged over the ranks that
    have a value (a rank with no finished episode yet has None), counts and throughputs summed, times the
    slowest rank's. One all-reduce of a [2, K] float64 tensor (value sums and how many ranks had one)."""
    if world_of(accelerator) == 1:
        return metrics
    keys = sorted(key for key in metrics if key not in SHARED)
    values = torch.zeros(3, len(keys), dtype=torch.float64)
    for column, key in enumerate(keys):
        value = metrics[key]
        if isinstance(value, int | float) and value is not None and math.isfinite(float(value)):
            values[0, column], values[1, column], values[2, column] = float(value), 1.0, float(value)
    summed = accelerator.reduce(values[:2].to(accelerator.device), reduction="sum").cpu()
    slowest = accelerator.gather(values[2:].to(accelerator.device)).cpu().max(dim=0).values
    out = dict(metrics)
    for column, key in enumerate(keys):
        total, count = summed[0, column].item(), summed[1, column].item()
        if count == 0:
            out[key] = None
        elif key in SUMMED:
            out[key] = int(total) if isinstance(metrics[key], int) else total
        elif key in SLOWEST:
            out[key] = slowest[column].item()
        else:
            out[key] = total / count
    return out


def agree_stop(accelerator: Accelerator | None, requested: bool) -> bool:
    """True on every rank when any rank got a stop signal (an all-reduce of max), so all ranks save the
    same update and exit together instead of some waiting forever in the next collective."""
    if world_of(accelerator) == 1:
        return requested
    flag = torch.tensor([float(requested)], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
