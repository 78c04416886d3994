"""The value warm-up trains the value head alone; a detached value head's loss never reaches the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmppo.config import load_config
from vlmppo.rl.startup import build_policy, make_optimizer
from vlmppo.rl.update import BadMinibatchGuard, ppo_epochs

SMALL = [
    "env.n_envs=2",
    "ppo.n_steps=4",
    "ppo.minibatch_size=4",
    "ppo.micro_batch_size=2",
    "ppo.n_epochs=2",
    "ppo.max_new_tokens=6",
    "ppo.lr=1e-2",
    "ppo.min_lr=1e-2",
    "ppo.value_warmup_updates=1",
]


def rollout_of(cfg):
    from vlmppo.envs import make_vec_env
    from vlmppo.rl.rollout import collect_rollout

    torch.manual_seed(0)
    policy = build_policy(cfg, "cpu")
    vec = make_vec_env(cfg.env.id, cfg.env.n_envs, 0)
    buffer, _, _ = collect_rollout(policy, vec, *vec.reset(), cfg)
    buffer.compute_advantages(cfg.ppo)
    buffer.normalize_advantages()
    return policy, buffer


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full-fine-tune"])
def test_a_warm_up_update_moves_the_value_head_and_leaves_every_policy_weight_exactly_as_it_was(
    tmp_path, lora
):
    cfg = load_config(
        "probe-color-tiny",
        # target_kl: any movement of the policy stops an ordinary update after one step, never a warm-up one
        overrides=[
            *SMALL,
            f"run.output_dir={tmp_path}",
            "ppo.target_kl=1e-9",
            *([] if lora else ["model.lora=null"]),
        ],
    )
    policy, buffer = rollout_of(cfg)
    optimizer = make_optimizer(policy, cfg)
    model = {n: q.detach().clone() for n, q in policy.loaded.model.named_parameters()}
    head = {n: q.detach().clone() for n, q in policy.value_head.named_parameters()}
    guard = BadMinibatchGuard(3)
    stats = ppo_epochs(policy, optimizer, buffer, cfg, np.random.default_rng(0), guard, value_only=True)

    assert stats["train/optimizer_steps"] == 4 and stats["train/value_warmup"] == 1.0
    assert "train/value_loss" in stats and "train/policy_loss" not in stats and "train/approx_kl" not in stats
    trained = [n for n, q in policy.loaded.model.named_parameters() if q.requires_grad]
    assert trained  # the LoRA weights, or every weight of the full fine-tune
    for name, param in policy.loaded.model.named_parameters():
        assert torch.equal(param.detach(), model[name]), name
        assert param.grad is None and param not in optimizer.state, name  # Adam never saw it
    for name, param in policy.value_head.named_parameters():
        assert not torch.equal(param.detach(), head[name]), name
    # The next, ordinary update trains the policy as well.
    stats = ppo_epochs(policy, optimizer, buffer, cfg, np.random.default_rng(1), guard)
    assert (
        stats["train/value_warmup"] == 0.0
        and "train/approx_kl" in stats
        and stats["train/early_stopped"] == 1
    )
    assert any(not torch.equal(q.detach(), model[n]) for n, q in policy.loaded.model.named_parameters())


@pytest.mark.parametrize("detach", [False, True])
def test_a_detached_value_head_gets_gradient_and_the_model_gets_none_from_the_value(tmp_path, detach):
    from vlmppo.rl.update import collate

    cfg = load_config(
        "probe-color-tiny",
        overrides=[*SMALL, f"run.output_dir={tmp_path}", "model.lora=null", f"ppo.value_detach={detach}"],
    )
    policy, buffer = rollout_of(cfg)
    assert policy.value_detach is detach
    minibatch = next(iter(buffer.minibatches(4, np.random.default_rng(0))))
    sampled, _ = collate(policy, next(iter(minibatch.micro_batches(2))))
    policy.loaded.model.train()
    _, values, _ = policy.score(sampled, temperature=cfg.ppo.temperature, return_logits=True)
    values.square().sum().backward()  # a value loss alone
    reached = [n for n, q in policy.loaded.model.named_parameters() if q.grad is not None and q.grad.any()]
    assert (reached == []) is detach
    assert all(q.grad is not None and q.grad.any() for q in policy.value_head.parameters())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ppo.advantage=grpo", "ppo.group_size=2"], "ppo.value_warmup_updates=1 needs a value head"),
        (["ppo.value_warmup_updates=4", "ppo.total_env_steps=32"], "is not less than the run's 4 updates"),
        (["ppo.launch=ddp"], "runs in one process only"),
    ],
)  # fmt: skip
def test_warm_up_settings_that_cannot_work_are_refused(overrides, message):
    from vlmppo.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        load_config("probe-color-tiny", overrides=[*SMALL, *overrides])
    assert message in " ".join(str(error.value).split())


def test_a_preset_with_a_detached_value_head_still_runs_the_critic_free_estimators():
    cfg = load_config("numberline-small", overrides=["ppo.advantage=gigpo", "ppo.group_size=8"])
    assert cfg.ppo.value_detach and cfg.ppo.advantage == "gigpo"
