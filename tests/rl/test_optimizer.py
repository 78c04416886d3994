"""PPO's optimizer: Adam without weight decay by default, as RL4VLM; ppo.weight_decay is AdamW's decoupled decay."""

from __future__ import annotations

import pytest
import torch

from vlmppo.config import load_config
from vlmppo.rl.startup import build_policy, make_optimizer


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    cfg = load_config("probe-color-tiny", overrides=[f"run.output_dir={tmp_path_factory.mktemp('opt')}"])
    torch.manual_seed(0)
    return build_policy(cfg, "cpu")


@pytest.mark.parametrize(("overrides", "factor"), [([], 1.0), (["ppo.weight_decay=0.1"], 1 - 0.5 * 0.1)])
def test_a_step_with_zero_gradients_decays_the_weights_only_by_lr_times_weight_decay(
    policy, overrides, factor
):
    cfg = load_config("probe-color-tiny", overrides=["ppo.lr=0.5", "ppo.min_lr=0", *overrides])
    optimizer = make_optimizer(policy, cfg)
    params = [q for group in optimizer.param_groups for q in group["params"]]
    assert params and all(group["weight_decay"] == cfg.ppo.weight_decay for group in optimizer.param_groups)
    before = [q.detach().clone() for q in params]
    for q in params:
        q.grad = torch.zeros_like(q)  # Adam's own step is then 0: what is left is the decay
    optimizer.step()
    for q, old in zip(params, before, strict=True):
        torch.testing.assert_close(q.detach(), old * factor, rtol=0, atol=1e-7)
    with torch.no_grad():  # undo, for the next case
        for q, old in zip(params, before, strict=True):
            q.copy_(old)
