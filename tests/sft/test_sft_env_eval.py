"""Greedy env episodes during SFT (``sft.eval_episodes``): rows at the eval steps, the numbers ``vlmppo eval``
gives for the checkpoint, a run that plays them trains exactly as one that does not, and clear refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tests.sft.helpers import sft_config, write_color_dataset

from vlmppo.eval.live import greedy_eval
from vlmppo.sft import train_sft

COMMON = ["sft.max_steps=4", "sft.eval_every=2", "sft.batch_size=2", "sft.lr=5e-3", "model.lora.dropout=0.1",
          "eval.max_new_tokens=16", "eval.seeds=[1000,1001]"]  # fmt: skip


def rows(cfg) -> list[dict]:
    path = f"{cfg.run.output_dir}/{cfg.run.name}/sft/metrics.jsonl"
    return [json.loads(line) for line in open(path)]


def test_a_run_that_plays_episodes_at_its_evals_trains_as_one_that_does_not_and_scores_like_vlmppo_eval(
    tmp_path,
):
    from vlmppo.eval.runner import evaluate

    train, val = write_color_dataset(tmp_path, n_train=8, n_val=2)
    plain = sft_config(tmp_path, train, val, *COMMON, "run.name=plain")
    a = train_sft(plain)
    played = sft_config(tmp_path, train, val, *COMMON, "run.name=played", "sft.eval_episodes=3")
    b = train_sft(played, evaluate_env=greedy_eval)

    rows_a, rows_b = rows(plain), rows(played)
    evaluated = [r for r in rows_b if "eval/success_rate" in r]
    assert [r["step"] for r in evaluated] == [2, 4] and all(r["eval/episodes"] == 6 for r in evaluated)
    assert not any("eval/success_rate" in r for r in rows_a)
    keys = ["step", "sft/loss", "sft/grad_norm", "sft/lr", "sft/tokens", "eval/loss", "eval/token_acc"]
    # the episodes disturbed no random stream: the same losses, step for step
    assert [{k: r.get(k) for k in keys} for r in rows_a] == [{k: r.get(k) for k in keys} for r in rows_b]
    wa = load_file(str(a.final / "adapter_model.safetensors"))
    wb = load_file(str(b.final / "adapter_model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # The last eval is what `vlmppo eval` reports for the final checkpoint, episode for episode.
    eval_cfg = played.model_copy(
        update={"eval": played.eval.model_copy(update={"episodes": 3, "ckpt": str(b.final)})}
    )
    report = evaluate(eval_cfg).metrics
    assert report["episodes"] == 6
    for key in ("success_rate", "return_mean", "invalid_action_rate", "length_mean"):
        assert evaluated[-1][f"eval/{key}"] == pytest.approx(report[key]), key


def test_episodes_without_a_player_seeds_or_with_zero3_are_clear_errors(tmp_path):
    from vlmppo.config import load_config
    from vlmppo.errors import ConfigError

    train, val = write_color_dataset(tmp_path, n_train=4, n_val=2)
    with pytest.raises(ConfigError, match="sft.eval_episodes=2 asks for greedy episodes during SFT"):
        train_sft(sft_config(tmp_path, train, val, *COMMON, "sft.eval_episodes=2"))
    with pytest.raises(ConfigError, match=r"sft.eval_episodes=2 plays eval.seeds, which is empty"):
        load_config("probe-color-tiny", overrides=["sft.eval_episodes=2", "eval.seeds=[]"])
    with pytest.raises(ConfigError, match="sft.launch=zero3 cannot"):
        load_config("probe-color-tiny", overrides=["sft.eval_episodes=2", "sft.launch=zero3"])


def test_without_a_val_set_the_episodes_alone_make_an_eval_row(tmp_path):
    from vlmppo.config import load_config

    train, _ = write_color_dataset(tmp_path, n_train=8, n_val=2)
    cfg = load_config("probe-color-tiny", overrides=[
        f"run.output_dir={tmp_path / 'runs'}", f"sft.train_file={train}", *COMMON, "sft.eval_episodes=2",
        "tracking.log_every=1000"])  # fmt: skip
    train_sft(cfg, evaluate_env=greedy_eval)
    logged = rows(cfg)
    assert all(r.get("eval/loss") is None for r in logged)  # no val set: no val loss
    assert [r["step"] for r in logged if "eval/success_rate" in r] == [2, 4]
