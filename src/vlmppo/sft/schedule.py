"""How many optimizer steps an SFT run takes, its learning rate at each step, and its data order.

All three are pure functions of the config, the dataset size and the step counter, so a resumed run
recomputes them instead of trusting saved scheduler objects (and DeepSpeed never gets to swap in its own
schedule: the loop writes the LR into the optimizer's param groups itself, before every step).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from vlmppo.rl.schedule import cosine_lr


@dataclass(frozen=True)
class SftCounts:
    """Derived numbers of an SFT run.

    Attributes:
        micro_per_epoch: Micro-batches of ``batch_size × world`` samples in one pass (the last one may be short).
        total_steps: Optimizer steps of the run (``sft.max_steps``, else ``ceil(epochs × micro_per_epoch / grad_accum)``).
        warmup_steps: Linear warm-up steps (``ceil(warmup_ratio × total_steps)``).
    """

    micro_per_epoch: int
    total_steps: int
    warmup_steps: int

    def epoch_at(self, micro_index: int) -> float:
        """Epochs done after ``micro_index`` micro-batches (for logs)."""
        return micro_index / self.micro_per_epoch


def sft_counts(sft, n_train: int, world: int = 1) -> SftCounts:
    """Optimizer steps and warm-up of a run over ``n_train`` samples on ``world`` processes."""
    micro = math.ceil(n_train / (sft.batch_size * world))
    total = sft.max_steps or max(1, math.ceil(sft.epochs * micro / sft.grad_accum))
    return SftCounts(micro, total, math.ceil(sft.warmup_ratio * total))


def lr_at(step: int, counts: SftCounts, lr: float, schedule: str) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up from 0, then cosine to 0 or constant.

    The same curve as transformers' ``get_cosine_schedule_with_warmup`` / ``get_constant_schedule_with_warmup``.
    """
    if schedule == "cosine":
        return cosine_lr(step, counts.total_steps, lr, 0.0, counts.warmup_steps)
    if step < counts.warmup_steps:
        return lr * step / counts.warmup_steps
    return lr


def epoch_order(lengths: list[int], epoch: int, *, seed: int, batch: int, group_by_length: bool) -> list[int]:
    """The sample order of one epoch: a fresh shuffle per (seed, epoch), or length-grouped batches.

    Deterministic in (seed, epoch), so resuming needs only the micro-batch counter, not a sampler state.
    """
    from vlmppo.sft.dataset import length_grouped_indices

    epoch_seed = seed * 1_000_003 + epoch
    if group_by_length:
        return length_grouped_indices(lengths, batch, seed=epoch_seed)
    order = list(range(len(lengths)))
    random.Random(epoch_seed).shuffle(order)
    return order


def micro_batch(
    lengths: list[int],
    micro_index: int,
    counts: SftCounts,
    *,
    seed: int,
    batch_size: int,
    world: int,
    rank: int,
    group_by_length: bool,
    order: list[int] | None = None,
) -> list[int]:
    """Sample indices of this rank's share of global micro-batch ``micro_index`` (counted over all epochs).

    ``order``: the epoch's `epoch_order`, when the caller keeps it (it is recomputed otherwise: a shuffle of
    the whole dataset per call).

    A global micro-batch is ``batch_size × world`` consecutive samples of the epoch's order; rank ``r``
    takes every ``world``-th of them from ``r``. The last one of an epoch may be short; with several
    processes it is topped up from the start of the epoch so that every rank gets the same number of
    samples (DDP/ZeRO would hang otherwise).
    """
    epoch, position = divmod(micro_index, counts.micro_per_epoch)
    global_batch = batch_size * world
    if order is None:
        order = epoch_order(lengths, epoch, seed=seed, batch=global_batch, group_by_length=group_by_length)
    chunk = order[position * global_batch : (position + 1) * global_batch]
    if world > 1 and len(chunk) < global_batch:
        chunk = (chunk + order * global_batch)[:global_batch]
    return chunk[rank::world]
