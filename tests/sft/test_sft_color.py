"""SFT learns the probe Color task from expert labels: ≥ 95% greedy success, in the val set and in the env."""

from __future__ import annotations

import numpy as np
import pytest

from vlmppo.config import load_config


@pytest.mark.e2e
def test_sft_on_expert_color_labels_reaches_95_percent_greedy_success(tmp_path):
    from vlmppo.checkpoints import load_policy_for_inference
    from vlmppo.data.collect import collect
    from vlmppo.data.label import label
    from vlmppo.data.preprocess import preprocess
    from vlmppo.envs import get_adapter, make_env
    from vlmppo.sft import train_sft

    # The preset's SFT settings (100 steps, batch 8, lr 2e-3); no dedupe, since Color has two frames only.
    cfg = load_config(
        "probe-color-tiny",
        overrides=[
            f"run.output_dir={tmp_path}",
            "collect.episodes=64",
            "preprocess.dedupe=false",
            "preprocess.val_fraction=0.25",
        ],
    )
    collect(cfg), label(cfg), preprocess(cfg)
    result = train_sft(cfg)
    assert result.steps == 100
    assert result.n_action_eval == 16 and result.unparseable_rate == 0.0
    assert result.action_acc >= 0.95
    # Greedy play in the env, on seeds never collected, with the checkpoint `ppo.init_from: sft` would load.
    adapter = get_adapter(cfg.env.id)
    policy = load_policy_for_inference(cfg, "sft")
    envs = [make_env(cfg.env.id) for _ in range(40)]
    frames, infos = zip(*(env.reset(seed=10_000 + k) for k, env in enumerate(envs)), strict=True)
    assert {i["color"] for i in infos} == {"red", "blue"}
    texts = policy.generate_text(
        list(frames), [adapter.prompt(i) for i in infos], temperature=0, max_new_tokens=48
    )
    rng = np.random.default_rng(0)
    rewards = []
    for env, text in zip(envs, texts, strict=True):
        parsed = adapter.parse(text, rng)
        rewards.append(0.0 if parsed.invalid else env.step(adapter.to_env_action(parsed.index))[1])
    assert np.mean(rewards) >= 0.95
