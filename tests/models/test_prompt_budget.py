"""The prompt budget of ``env.history`` (``models/budget.py``): measured with each family's processor, checked
against the context, reported by ``--dry-run`` and refused with one clear message when it cannot fit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tests.helpers import run_cli

from vlmppo.config import load_config
from vlmppo.errors import ConfigError
from vlmppo.models.budget import config_prompt_budget, prompt_budget
from vlmppo.models.inputs import Turn, build_inputs, to_pil


def test_budget_counts_the_frames_text_and_answers_of_k_turns(frozen_models, family):
    loaded = frozen_models[family]
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    budget = prompt_budget(loaded, frame, "Which way?", history=2, max_new_tokens=10)
    # What build_inputs makes of the same step with two earlier turns of empty answers.
    batch = build_inputs(loaded, [to_pil(frame)], ["Which way?"], histories=[[Turn(frame, "")] * 2])
    config = loaded.model.config
    image_id = getattr(config, "image_token_id", None) or config.image_token_index
    image_tokens = int((batch["input_ids"] == image_id).sum())
    assert budget.images == 3 and budget.image_tokens * 3 == image_tokens > 0
    assert budget.text_tokens + image_tokens == batch["input_ids"].shape[1]
    assert budget.total == image_tokens + budget.text_tokens + 3 * 10
    assert budget.context == 4096 and budget.fits


def test_the_most_turns_that_fit_is_the_largest_k_within_the_context(frozen_models):
    loaded = frozen_models["llava"]
    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    budget = prompt_budget(loaded, frame, "Go.", history=3, max_new_tokens=20)
    most = dataclasses.replace(budget, context=budget.total + 5).most_turns()
    assert most == 3  # one more turn costs more than 5 tokens
    tight = dataclasses.replace(budget, context=budget.total - 1)
    assert not tight.fits and tight.most_turns() == 2
    with pytest.raises(ConfigError, match=r"env.history=3 does not fit .* Use env.history=2 or less"):
        tight.check("tiny:llava", "ppo.max_new_tokens")


def test_config_budget_measures_the_env_frame_and_prompt(tmp_path):
    cfg = load_config("minigrid-doorkey-tiny", overrides=["env.history=2", f"run.output_dir={tmp_path}"])
    budget = config_prompt_budget(cfg, cfg.ppo.max_new_tokens)
    assert budget is not None and budget.history == 2 and budget.answer_tokens == cfg.ppo.max_new_tokens
    assert budget.image_tokens > 0 and budget.fits


@pytest.mark.e2e
def test_dry_run_reports_the_budget_and_refuses_a_history_that_cannot_fit(tmp_path):
    common = ["--preset", "numberline-tiny", f"run.output_dir={tmp_path}", "--dry-run"]
    fits = run_cli("ppo", *common, "env.history=2")
    assert fits.returncode == 0, fits.stderr
    text = " ".join(fits.stdout.split())
    assert "prompt budget" in text and "3 frame(s) x" in text and "of 4096 tokens" in text
    refused = run_cli("eval", *common, "env.history=60", "eval.max_new_tokens=128")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    message = " ".join(refused.stderr.split())
    assert "env.history=60 does not fit tiny:qwen2-vl" in message and "eval.max_new_tokens" in message


def test_the_memory_estimate_counts_the_earlier_frames_and_answers():
    from vlmppo.memory import estimate_ppo_memory

    base = estimate_ppo_memory(load_config("numberline-tiny"))
    more = estimate_ppo_memory(load_config("numberline-tiny", overrides=["env.history=2"]))
    frame = base.prompt_tokens - 200
    assert more.prompt_tokens == base.prompt_tokens + 2 * (frame + 48 + 10)  # max_new_tokens 48
    assert more.rollout_gb > base.rollout_gb and more.update_gb > base.update_gb


def test_a_model_known_only_by_its_config_gets_an_estimated_budget():
    from vlmppo.memory import estimate_prompt_budget

    cfg = load_config("numberline-llava", overrides=["env.history=2"])  # a Hub id, not downloaded
    budget = estimate_prompt_budget(cfg, cfg.ppo.max_new_tokens)
    assert budget.estimated and budget.images == 3 and budget.image_tokens > 500
    assert budget.context == 32768 and budget.fits and "estimated" in budget.describe()
    too_many = estimate_prompt_budget(load_config("numberline-llava", overrides=["env.history=40"]), 256)
    assert not too_many.fits and 0 < too_many.most_turns() < 40
