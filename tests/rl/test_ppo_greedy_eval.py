"""Greedy evals during PPO (``ppo.eval_every``): rows at the right updates, the numbers ``vlmppo eval`` gives,
and a run that evaluates (stopped and resumed or not) trains exactly as one that does not."""

from __future__ import annotations

import json

import pytest
import torch
from tests.rl.test_ppo_resume import SMALL as RESUME_SMALL
from tests.rl.test_ppo_resume import stop_at

from vlmppo.config import load_config
from vlmppo.eval.live import greedy_eval
from vlmppo.rl import train_ppo

SMALL = [
    *RESUME_SMALL,  # 4 updates of 2 envs x 4 steps, answers of 8 tokens
    "ppo.lr=1e-3",
    "eval.max_new_tokens=8",
    "ppo.eval_episodes=2",
    "env.max_episode_steps=4",
]
EVAL_KEYS = ("eval/success_rate", "eval/return_mean", "eval/invalid_action_rate", "eval/episodes")
TRAIN_KEYS = ("train/policy_loss", "train/value_loss", "train/approx_kl", "rollout/reward_mean", "env_steps")


def rows(root, name="numberline-tiny"):
    return [json.loads(line) for line in (root / name / "ppo/metrics.jsonl").read_text().splitlines()]


def weights(root, name="numberline-tiny"):
    from safetensors.torch import load_file

    return load_file(str(root / name / "ppo/checkpoints/last/adapter_model.safetensors"))


def test_a_run_that_evaluates_every_2_updates_trains_as_one_that_does_not_also_when_resumed(tmp_path):
    plain = load_config("numberline-tiny", overrides=[*SMALL, f"run.output_dir={tmp_path / 'plain'}"])
    train_ppo(plain)
    evaluated = [*SMALL, "ppo.eval_every=2"]
    straight = load_config(
        "numberline-tiny", overrides=[*evaluated, f"run.output_dir={tmp_path / 'straight'}"]
    )
    train_ppo(straight, evaluate=greedy_eval)
    split = load_config("numberline-tiny", overrides=[*evaluated, f"run.output_dir={tmp_path / 'split'}"])
    assert train_ppo(split, evaluate=greedy_eval, on_update=stop_at(1)).updates == 1
    assert train_ppo(split, evaluate=greedy_eval, resume="auto").updates == 4

    a, b, c = rows(tmp_path / "plain"), rows(tmp_path / "straight"), rows(tmp_path / "split")
    assert [m["update"] for m in b] == [m["update"] for m in c] == [0, 1, 2, 3, 4]
    assert [m["update"] for m in b if "eval/success_rate" in m] == [0, 2, 4]  # the start, every 2, the last
    assert set(b[0]) == {
        "update",
        "env_steps",
        "time/eval_s",
        *EVAL_KEYS,
        "eval/solved_rate",
        "eval/length_mean",
    }
    assert (
        b[0]["env_steps"] == 0 and b[0]["eval/episodes"] == 2 and not any(k.startswith("eval/") for k in a[0])
    )
    for ma, mb, mc in zip(a, b[1:], c[1:], strict=True):  # the evals disturbed no random stream nor env
        for key in TRAIN_KEYS:
            assert ma[key] == pytest.approx(mb[key], rel=1e-6, abs=1e-7) == mc[key], (ma["update"], key)
    for mb, mc in zip(b, c, strict=True):
        assert {k: mb.get(k) for k in EVAL_KEYS} == {k: mc.get(k) for k in EVAL_KEYS}, mb["update"]
    for other in (weights(tmp_path / "straight"), weights(tmp_path / "split")):
        for key, value in weights(tmp_path / "plain").items():
            torch.testing.assert_close(other[key], value, rtol=1e-5, atol=1e-6)


def test_the_last_updates_greedy_eval_is_what_vlmppo_eval_reports_for_its_checkpoint(tmp_path):
    from vlmppo.eval.runner import evaluate

    overrides = [
        *SMALL,
        "ppo.total_env_steps=8",
        "ppo.eval_every=5",
        "ppo.eval_episodes=3",
        "eval.seeds=[7,8]",
    ]
    cfg = load_config("numberline-tiny", overrides=[*overrides, f"run.output_dir={tmp_path}"])
    result = train_ppo(cfg, evaluate=greedy_eval)
    last = rows(tmp_path)[-1]
    assert last["update"] == result.updates == 1 and last["eval/episodes"] == 6  # 3 per seed
    report = evaluate(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"episodes": 3})})).metrics
    assert report["episodes"] == 6
    for key in ("success_rate", "return_mean", "invalid_action_rate", "length_mean"):
        assert last[f"eval/{key}"] == pytest.approx(report[key]), key


def test_eval_every_without_eval_seeds_is_refused():
    from vlmppo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"ppo.eval_every=3 evaluates on eval.seeds, which is empty"):
        load_config("numberline-tiny", overrides=[*SMALL, "ppo.eval_every=3", "eval.seeds=[]"])
    assert (
        load_config("numberline-tiny", overrides=[*SMALL, "ppo.eval_every=0", "eval.seeds=[]"]).ppo.eval_every
        == 0
    )


def test_eval_every_without_an_evaluator_is_one_clear_error(tmp_path):
    from vlmppo.errors import ConfigError

    cfg = load_config("numberline-tiny", overrides=[*SMALL, "ppo.eval_every=1", f"run.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="ppo.eval_every=1 asks for greedy evals") as error:
        train_ppo(cfg)
    assert "vlmppo.eval.live.greedy_eval" in error.value.hint
    assert not (tmp_path / "numberline-tiny/ppo").exists()  # refused before the run folder


def test_what_draws_random_numbers_inside_an_eval_leaves_every_stream_where_it_was():
    import random

    import numpy as np

    from vlmppo.eval.live import untouched_random_streams

    def draws():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = draws()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with untouched_random_streams("cpu"):
        inside = draws()
        torch.manual_seed(5), np.random.seed(5), random.seed(5)  # as eval's own seeding would
    assert inside == expected and draws() == expected


def test_a_lora_policy_is_evaluated_as_it_samples_from_its_merged_copy_once_refreshed(tmp_path):
    from vlmppo.envs import adapter_from_config, make_vec_env
    from vlmppo.eval.live import LiveActor
    from vlmppo.rl.startup import build_policy

    def answers(merged: bool):
        """The greedy answers to 4 first frames before and after an update's worth of LoRA change."""
        overrides = [
            *SMALL,
            f"ppo.merged_sampling={merged}",
            "ppo.eval_episodes=1",
            f"run.output_dir={tmp_path}",
        ]
        cfg = load_config("numberline-tiny", overrides=overrides)
        obs, infos = make_vec_env(cfg.env.id, 4, 0).reset()
        prompts = [adapter_from_config(cfg.env).prompt(info) for info in infos]
        torch.manual_seed(0)
        policy = build_policy(cfg, "cpu")
        before = LiveActor(policy, 8).answer(obs, prompts)[0]
        with torch.no_grad():  # the merged copy is stale until refreshed
            for name, param in policy.loaded.model.named_parameters():
                if "lora_B" in name:
                    param.add_(0.5 * torch.randn_like(param))
        policy.weights_changed()
        after = LiveActor(policy, 8).answer(obs, prompts)[0]
        policy.loaded.model.train()  # as the update leaves it
        assert (
            greedy_eval(policy, cfg)["eval/episodes"] == 1 and policy.loaded.model.training
        )  # mode put back
        return policy, before, after

    merged, merged_before, merged_after = answers(True)
    plain, plain_before, plain_after = answers(False)
    assert plain_after != plain_before  # the change shows in the answers
    assert merged_before == plain_before and merged_after == plain_after
    assert merged.sampler is not None and not merged.sampler.stale and plain.sampler is None


@pytest.mark.e2e
def test_the_ppo_command_shows_the_greedy_success_and_logs_the_start_eval(tmp_path):
    from tests.helpers import run_cli

    out = run_cli("ppo", "--preset", "numberline-tiny", *SMALL, "ppo.total_env_steps=16", "ppo.eval_every=1",
                  f"run.output_dir={tmp_path}")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "greedy 0%" in " ".join(out.stdout.split())  # the status line (the tiny model never succeeds)
    assert [m["update"] for m in rows(tmp_path) if "eval/success_rate" in m] == [0, 1, 2]
