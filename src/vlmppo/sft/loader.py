"""The SFT loop's micro-batches, collated ahead of the step, in worker processes on a GPU.

Collating a sample (decode its PNG, resize and patch the image, apply the chat template, tokenize) costs a few
milliseconds of CPU: as much as a small model's whole training step per sample on a GPU, so a loop that collates
in between steps leaves the GPU idle most of the time. Which samples make up micro-batch ``k`` is a pure function
of ``k`` (`vlmppo.sft.schedule.micro_batch`), so workers can collate ``k+1, k+2, ...`` while the GPU trains on
``k``: the order, and with it the exact resume, is unchanged; only where the collating happens differs.

``sft.loader_workers`` sets the number of worker processes (null: none on a CPU, up to 8 on a GPU; 0 collates in
the training process, as before). The truncated/skipped counts travel back with each batch. The workers are forked
once per run (one iterator over all the run's remaining micro-batches) and each keeps its collator's cache of
distinct samples (sft/collate_cache.py) for the whole run; on a GPU the batches come back pinned.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from vlmppo.sft.dataset import SftCollator
from vlmppo.sft.schedule import epoch_order, micro_batch

if TYPE_CHECKING:
    from vlmppo.sft.run import SftRun


def loader_workers(setting: int | None, device) -> int:
    """Worker processes for ``sft.loader_workers``: the setting, else 0 on a CPU (the cores train) and
    ``min(8, cores - 1)`` on a GPU."""
    if setting is not None:
        return setting
    if torch.device(device).type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class MicroBatches(torch.utils.data.Dataset):
    """Item ``i``: the collated micro-batch number ``start + i`` of this rank, with the samples it truncated
    and skipped. Holds no model (a worker needs only the processor), so it can be sent to any process."""

    def __init__(self, run: SftRun, start: int, stop: int):
        sft = run.cfg.sft
        self.start, self.stop = start, stop
        self.train, self.lengths, self.counts = run.train, run.lengths, run.counts
        self.seed, self.batch_size, self.group_by_length = (
            run.cfg.run.seed,
            sft.batch_size,
            sft.group_by_length,
        )
        self.world, self.rank = run.accelerator.num_processes, run.accelerator.process_index
        self.collator = SftCollator(replace(run.loaded, model=None), sft.max_length, sft.on_too_long)
        self._orders: dict[int, list[int]] = {}  # one shuffle per epoch, not one per micro-batch

    def __len__(self) -> int:
        return self.stop - self.start

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            self._orders = {epoch: epoch_order(self.lengths, epoch, seed=self.seed,
                                               batch=self.batch_size * self.world,
                                               group_by_length=self.group_by_length)}  # fmt: skip
        return self._orders[epoch]

    def __getitem__(self, i: int):
        index = self.start + i
        indices = micro_batch(self.lengths, index, self.counts, seed=self.seed, batch_size=self.batch_size,
                              world=self.world, rank=self.rank, group_by_length=self.group_by_length,
                              order=self._order(index // self.counts.micro_per_epoch))  # fmt: skip
        truncated, skipped = self.collator.truncated, self.collator.skipped
        batch = self.collator([self.train[k] for k in indices])
        return batch, self.collator.truncated - truncated, self.collator.skipped - skipped


def _as_is(item):
    return item


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # the workers share the cores: each one thread, not each all of them


def next_micro_batch(run: SftRun):
    """The next micro-batch of the run (``progress.micro``, then counted); starts the workers on first use."""
    if run.batches is None:
        stop = run.counts.total_steps * run.cfg.sft.grad_accum
        dataset = MicroBatches(run, run.progress.micro, max(stop, run.progress.micro + 1))
        workers = loader_workers(run.cfg.sft.loader_workers, run.accelerator.device)
        # Pinned batches (copied by the loader's thread, beside the step) go to the GPU faster and asynchronously.
        pin = bool(workers) and run.accelerator.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, shuffle=False, collate_fn=_as_is, num_workers=workers,
            prefetch_factor=4 if workers else None, worker_init_fn=_one_thread if workers else None,
            persistent_workers=False, pin_memory=pin,
            generator=torch.Generator(),  # its own: the global RNG (dropout; saved in checkpoints) stays untouched
        )  # fmt: skip
        run.batches = iter(loader)
    batch, truncated, skipped = next(run.batches)
    run.collator.truncated += truncated
    run.collator.skipped += skipped
    run.progress.micro += 1
    return batch


def close_loader(run: SftRun) -> None:
    """Stop the workers (an early stop or a signal leaves batches unused)."""
    run.batches = None
