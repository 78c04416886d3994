"""`eval` and `collect --policy checkpoint` with ``env.history``: each step's prompt shows its own episode's
last K frames and answers, and a new episode starts with none."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlmppo.config import config_to_yaml, load_config
from vlmppo.models.generation import Generator

pytestmark = pytest.mark.e2e  # eval and collect with a tiny VLM acting


@pytest.fixture
def seen_histories():
    """Every ``Generator.generate_answers`` call's histories and answers, in order."""
    calls = []
    original = Generator.generate_answers

    def spy(self, images, prompts, **kwargs):
        texts, ids = original(self, images, prompts, **kwargs)
        calls.append((kwargs.get("histories"), texts))
        return texts, ids

    Generator.generate_answers = spy
    yield calls
    Generator.generate_answers = original


def write_checkpoint(cfg, out):
    """A PPO-shaped checkpoint (LoRA adapter + value head) of the run, as eval finds them."""
    from safetensors.torch import save_file

    from vlmppo.checkpoints import save_checkpoint
    from vlmppo.models import load_model
    from vlmppo.rl.policy import ValueHead, hidden_size

    loaded = load_model(cfg.model, for_training=True)
    head = ValueHead(hidden_size(loaded.model))

    def write(folder):
        loaded.model.save_pretrained(folder)
        loaded.processor.save_pretrained(folder)
        save_file(head.state_dict(), str(folder / "value_head.safetensors"))
        (folder / "config.yaml").write_text(config_to_yaml(cfg))

    meta = {"stage": "ppo", "family": cfg.model.family, "base_model": str(loaded.path), "update": 1}
    return save_checkpoint(out / "run/ppo/checkpoints", 1, meta, write)


def test_eval_shows_each_step_its_episodes_last_turns(tmp_path, seen_histories):
    from vlmppo.eval.runner import evaluate

    cfg = load_config(
        "numberline-tiny",
        overrides=[f"run.output_dir={tmp_path}", "run.name=run", "env.history=2", "env.n_envs=1",
                   "ppo.minibatch_size=8", "env.max_episode_steps=4", "eval.episodes=2", "eval.seeds=[0]", "eval.max_new_tokens=6"],
    )  # fmt: skip
    write_checkpoint(cfg, tmp_path)
    result = evaluate(cfg)
    rows = [json.loads(line) for line in (result.out_dir / "episodes.jsonl").read_text().splitlines()]
    # One env: the calls run step by step, episode after episode, in the order of the sorted rows.
    assert len(seen_histories) == len(rows) >= 3
    for (histories, texts), row in zip(seen_histories, rows, strict=True):
        earlier = [r["answer"] for r in rows if r["episode"] == row["episode"] and r["step"] < row["step"]]
        assert [turn.answer for turn in histories[0]] == earlier[-2:]
        assert texts == [row["answer"]]
        assert isinstance(row["value"], float)


def test_collect_with_a_checkpoint_shows_the_recorded_frames_and_answers(tmp_path, seen_histories):
    from vlmppo.data.collect import collect

    cfg = load_config(
        "numberline-tiny",
        overrides=[f"run.output_dir={tmp_path}", "run.name=run", "env.history=1", "env.n_envs=1",
                   "ppo.minibatch_size=8", "env.max_episode_steps=3", "collect.episodes=3", "collect.max_new_tokens=6",
                   "collect.policy=checkpoint"],
    )  # fmt: skip
    checkpoint = write_checkpoint(cfg, tmp_path)
    cfg = cfg.model_copy(update={"collect": cfg.collect.model_copy(update={"ckpt": str(checkpoint)})})
    result = collect(cfg)
    rows = sorted(
        map(json.loads, (result.out_dir / "episodes.jsonl").open()), key=lambda r: (r["episode"], r["step"])
    )
    # One env: the calls run step by step, episode after episode, in the order of the sorted rows.
    assert len(seen_histories) == len(rows) > 3
    for (histories, texts), row in zip(seen_histories, rows, strict=True):
        assert texts == [row["answer"]]
        if row["step"] == 0:
            assert histories == [()]
            continue
        ((turn,),) = histories
        before = next(r for r in rows if (r["episode"], r["step"]) == (row["episode"], row["step"] - 1))
        assert turn.answer == before["answer"]
        recorded = np.asarray(Image.open(result.out_dir / before["frame"]).convert("RGB"))
        assert np.array_equal(np.asarray(turn.frame), recorded)
