"""SFT step counts, LR curve and data order: pure functions of the config and the step counter."""

from __future__ import annotations

import pytest
import torch

from vlmppo.config.schema import SftConfig
from vlmppo.sft.schedule import lr_at, micro_batch, sft_counts


def test_counts_follow_epochs_accumulation_and_processes():
    s = SftConfig(epochs=3, batch_size=4, grad_accum=2, warmup_ratio=0.1)
    c = sft_counts(s, n_train=30, world=1)
    assert (c.micro_per_epoch, c.total_steps, c.warmup_steps) == (8, 12, 2)  # ceil(30/4)=8; 3*8/2
    assert sft_counts(s, n_train=30, world=2).micro_per_epoch == 4  # ceil(30/8)
    assert sft_counts(SftConfig(max_steps=7, epochs=99), n_train=30).total_steps == 7


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_lr_curve_matches_transformers_schedules_with_warmup(schedule):
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    s = SftConfig(max_steps=20, warmup_ratio=0.2, lr=3e-4, lr_schedule=schedule)
    c = sft_counts(s, n_train=100)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=s.lr)
    if schedule == "cosine":
        ref = get_cosine_schedule_with_warmup(opt, c.warmup_steps, c.total_steps)
    else:
        ref = get_constant_schedule_with_warmup(opt, c.warmup_steps)
    for step in range(c.total_steps):
        assert lr_at(step, c, s.lr, schedule) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12), step
        opt.step()
        ref.step()


@pytest.mark.parametrize("world, group", [(1, False), (2, False), (3, True)])
def test_every_sample_once_per_epoch_and_a_fresh_order_each_epoch(world, group):
    s = SftConfig(batch_size=2, epochs=2)
    lengths = [(7 * i) % 11 for i in range(13)]
    c = sft_counts(s, len(lengths), world)

    def epoch(e):
        seen = []
        for m in range(e * c.micro_per_epoch, (e + 1) * c.micro_per_epoch):
            shares = [micro_batch(lengths, m, c, seed=5, batch_size=2, world=world, rank=r, group_by_length=group)
                      for r in range(world)]  # fmt: skip
            assert len({len(x) for x in shares}) == 1  # every rank gets as many samples (DDP/ZeRO lockstep)
            seen += [i for x in shares for i in x]
        return seen

    first, second = epoch(0), epoch(1)
    assert set(first) == set(range(13)) and set(second) == set(range(13))
    assert len(first) == 13 if world == 1 else len(first) >= 13  # topped up only with several ranks
    assert first != second
