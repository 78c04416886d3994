"""GRPO and GiGPO on the PPO loop: no value head anywhere, group metrics, exact resume, config checks."""

from __future__ import annotations

import json

import pytest
import torch

from vlmppo.config import load_config
from vlmppo.rl import train_ppo

SMALL = [
    "env.n_envs=4",
    "ppo.group_size=2",
    "ppo.n_steps=4",
    "ppo.minibatch_size=8",
    "ppo.micro_batch_size=4",
    "ppo.n_epochs=2",
    "ppo.max_new_tokens=8",
    "ppo.save_every=100",
    "ppo.lr=1e-2",
    "ppo.min_lr=1e-2",
]


def metrics(run):
    return [json.loads(line) for line in (run / "ppo/metrics.jsonl").read_text().splitlines()]


def test_grpo_trains_the_lora_weights_without_any_value_head(tmp_path):
    from vlmppo.rl import startup

    cfg = load_config(
        "probe-color-tiny",
        overrides=[*SMALL, "ppo.advantage=grpo", "ppo.total_env_steps=16", f"run.output_dir={tmp_path}"],
    )
    captured = {}
    original = startup.build_policy

    def spy(*args, **kwargs):
        captured["policy"] = policy = original(*args, **kwargs)
        captured["before"] = {n: q.detach().clone() for n, q in policy.loaded.model.named_parameters()}
        return policy

    startup.build_policy = spy
    try:
        result = train_ppo(cfg)
    finally:
        startup.build_policy = original
    policy = captured["policy"]
    assert policy.value_head is None
    moved = [
        not torch.equal(q.detach(), captured["before"][n]) for n, q in policy.loaded.model.named_parameters()
    ]
    assert any(moved)  # some group had a spread: the policy gradient was not all zero
    rows = metrics(tmp_path / "probe-color-tiny")
    assert len(rows) == result.updates == 1
    for row in rows:
        assert not {"train/value_loss", "train/explained_variance", "rollout/value_mean"} & row.keys()
        assert row["rollout/group_count"] == 8  # 2 groups x 4 one-step rounds, all complete
        assert row["rollout/group_idle_frac"] == 0 and row["rollout/group_unused_frac"] == 0
        assert 0 <= row["rollout/group_zero_spread_frac"] <= 1
    checkpoint = result.checkpoint
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert not (checkpoint / "value_head.safetensors").exists()


def straight_and_resumed(tmp_path, overrides, *, stop_after: int, total: int):
    """The metrics of one straight run (``tmp_path/a``) and of one stopped after ``stop_after`` updates and
    resumed to ``total`` (``tmp_path/b``), of probe-color-tiny with ``overrides``."""
    from tests.rl.test_ppo_resume import stop_at

    train_ppo(load_config("probe-color-tiny", overrides=[*overrides, f"run.output_dir={tmp_path / 'a'}"]))
    split = load_config("probe-color-tiny", overrides=[*overrides, f"run.output_dir={tmp_path / 'b'}"])
    assert train_ppo(split, on_update=stop_at(stop_after)).updates == stop_after
    assert train_ppo(split, resume="auto").updates == total
    return metrics(tmp_path / "a/probe-color-tiny"), metrics(tmp_path / "b/probe-color-tiny")


def test_gigpo_four_updates_straight_equal_two_then_resume_two(tmp_path):
    overrides = [*SMALL, "ppo.advantage=gigpo", "ppo.total_env_steps=64"]
    a, b = straight_and_resumed(tmp_path, overrides, stop_after=2, total=4)
    assert [m["update"] for m in b] == [1, 2, 3, 4]
    for ma, mb in zip(a, b, strict=True):
        for key in ("train/policy_loss", "train/approx_kl", "rollout/reward_mean", "rollout/step_groups"):
            assert ma[key] == pytest.approx(mb[key], rel=1e-6, abs=1e-7), (ma["update"], key)
    # Color: a round's two members see the same frame (one seed), so each round is one anchor group of 2.
    assert all(m["rollout/step_groups"] == 8 and m["rollout/step_group_size"] == 2 for m in a)
    assert any(m["train/policy_loss"] != 0 for m in a)


def test_gigpo_with_a_history_of_turns_resumes_exactly_and_starts_each_round_with_empty_windows(tmp_path):
    # Two-step Color episodes with env.history=1: the second step's prompt holds the first turn. Every update
    # restarts the groups (vec.reset), so the windows of earlier turns start empty with them.
    overrides = [
        *SMALL,
        "ppo.advantage=gigpo",
        "ppo.total_env_steps=48",
        "env.history=1",
        "env.kwargs.steps=2",
    ]
    a, b = straight_and_resumed(tmp_path, overrides, stop_after=1, total=3)
    assert [m["update"] for m in b] == [1, 2, 3]
    for ma, mb in zip(a, b, strict=True):
        for key in ("train/policy_loss", "train/approx_kl", "rollout/reward_mean"):
            assert ma[key] == pytest.approx(mb[key], rel=1e-6, abs=1e-7), (ma["update"], key)
    from vlmppo.checkpoints import latest_checkpoint
    from vlmppo.train_state import load_trainer_state

    state = load_trainer_state(
        latest_checkpoint(tmp_path / "b/probe-color-tiny/ppo/checkpoints"), stage="ppo"
    )
    assert len(state["history"]) == 4  # one window per env, saved with the checkpoint


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ppo.advantage=grpo", "env.n_envs=6", "ppo.group_size=4"], "multiple of ppo.group_size"),
        (["ppo.advantage=gigpo", "env.n_envs=4", "ppo.group_size=1"], "no peers"),
        (
            [
                "ppo.advantage=grpo",
                "env.n_envs=4",
                "ppo.group_size=2",
                "env.max_episode_steps=9",
                "ppo.n_steps=8",
            ],
            "does not fit a rollout",
        ),
    ],
)
def test_group_settings_that_cannot_give_a_signal_are_refused(overrides, message):
    from vlmppo.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(
            "probe-color-tiny", overrides=["ppo.minibatch_size=4", "ppo.micro_batch_size=4", *overrides]
        )


def test_the_dry_run_plan_names_the_estimator_and_its_groups():
    from vlmppo.config.plan import stage_plan

    rows = dict(stage_plan(load_config("numberline-qwen-gigpo"), "ppo"))
    assert (
        rows["advantages"] == "GIGPO, no value head: 4 groups of 8 (mean only) + 1 x step level (gamma 0.95)"
    )
    assert dict(stage_plan(load_config("numberline-qwen-grpo"), "ppo"))["advantages"] == (
        "GRPO, no value head: 4 groups of 8 (/ std)"
    )
    assert dict(stage_plan(load_config("numberline-qwen"), "ppo"))["advantages"].startswith("GAE (gamma 0.9")
