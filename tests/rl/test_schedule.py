"""Cosine LR schedule: endpoints, midpoint, warm-up, and the torch scheduler wrapper."""

import pytest
import torch

from vlmppo.rl.schedule import cosine_lr, make_cosine_scheduler


def test_cosine_starts_at_lr_and_ends_exactly_at_min_lr():
    assert cosine_lr(0, 10, lr=1e-3, min_lr=1e-5) == pytest.approx(1e-3, rel=1e-12)
    assert cosine_lr(10, 10, lr=1e-3, min_lr=1e-5) == 1e-5
    assert cosine_lr(25, 10, lr=1e-3, min_lr=1e-5) == 1e-5


def test_cosine_midpoint_is_mean_of_lr_and_min_lr():
    # p = 0.5: min + ½(lr − min)(1 + cos π/2) = 0.1 + 0.5·0.9 = 0.55
    assert cosine_lr(5, 10, lr=1.0, min_lr=0.1) == pytest.approx(0.55, abs=1e-12)
    # p = 0.25: 0.1 + 0.45·(1 + cos π/4) = 0.1 + 0.45·1.707107 = 0.868198
    assert cosine_lr(2, 8, lr=1.0, min_lr=0.1) == pytest.approx(0.868198, abs=1e-6)


def test_warmup_is_linear_from_zero_then_cosine_over_the_rest():
    kw = dict(total_steps=12, lr=1.0, min_lr=0.0, warmup_steps=4)
    assert [cosine_lr(s, **kw) for s in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    # cosine over the 8 post-warm-up steps: step 8 is p = 0.5 → 0.5
    assert cosine_lr(8, **kw) == pytest.approx(0.5, abs=1e-12)
    assert cosine_lr(12, **kw) == 0.0


def test_warmup_spanning_all_steps_ends_at_min_lr():
    # no cosine phase at all: 0, 0.5 during warm-up, then min_lr from total_steps on
    kw = dict(total_steps=2, lr=1.0, min_lr=0.1, warmup_steps=2)
    assert [cosine_lr(s, **kw) for s in range(4)] == pytest.approx([0.0, 0.5, 0.1, 0.1])


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="total_steps"):
        cosine_lr(0, 0, 1.0, 0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_lr(0, 5, 1.0, 0.0, warmup_steps=6)


def test_scheduler_sets_optimizer_lr_each_step():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = make_cosine_scheduler(opt, total_steps=4, lr=1.0, min_lr=0.2, warmup_steps=2)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warm-up 0, 0.5; then p = 0 → 1.0, p = 0.5 → 0.2 + 0.4·1 = 0.6; then min_lr
    assert seen == pytest.approx([0.0, 0.5, 1.0, 0.6, 0.2, 0.2])


def test_scheduler_resumes_from_state_dict():
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return opt, make_cosine_scheduler(opt, total_steps=10, lr=1.0, min_lr=0.0)

    opt, sched = make()
    for _ in range(5):
        opt.step()
        sched.step()
    opt2, sched2 = make()
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    opt2.step()
    sched2.step()
    # step 6 of 10: 0.5·(1 + cos 0.6π) = 0.345492
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.345492, abs=1e-6)


def test_scheduler_rejects_optimizer_with_other_lr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    with pytest.raises(ValueError, match="lr=0.5"):
        make_cosine_scheduler(opt, total_steps=10, lr=1.0, min_lr=0.0)
