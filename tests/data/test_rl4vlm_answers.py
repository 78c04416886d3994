"""With env.prompt=rl4vlm, collected prompts, expert labels and the SFT dataset all use the paper's format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmppo.config import load_config
from vlmppo.data.collect import collect
from vlmppo.data.label import label
from vlmppo.data.preprocess import preprocess
from vlmppo.envs import get_adapter

FIELDS = ["cards", "current formula", "thoughts", "action"]


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def rl4vlm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl4vlm")
    cfg = load_config(
        "ezpoints-tiny",
        overrides=[
            f"run.output_dir={root}",
            "env.prompt=rl4vlm",
            "collect.episodes=6",
            "preprocess.val_fraction=0",
        ],
    )
    collect(cfg)
    label(cfg)
    preprocess(cfg)
    return cfg, root / cfg.run.name


def test_collected_prompts_ask_for_the_papers_fields(rl4vlm_run):
    _, run = rl4vlm_run
    for step in rows(run / "collect/episodes.jsonl"):
        assert '"cards": [x, y]' in step["prompt"] and '"current formula":' in step["prompt"]


def test_sft_answers_carry_each_steps_fields_and_parse_back_to_the_label(rl4vlm_run):
    cfg, run = rl4vlm_run
    adapter = get_adapter(cfg.env.id, prompt="rl4vlm")
    steps = {(s["episode"], s["step"]): s for s in rows(run / "collect/episodes.jsonl")}
    examples = rows(run / "data/train.jsonl")
    assert len(examples) == len(steps)
    for example in examples:
        state = steps[(example["episode"], example["step"])]["state"]
        answer = example["messages"][1]["content"][0]["text"]
        fields = json.loads(answer)
        assert list(fields) == FIELDS
        assert fields["cards"] == state["numbers"] and fields["current formula"] == "".join(state["formula"])
        parsed = adapter.parse(answer, np.random.default_rng(0))
        assert not parsed.invalid and adapter.legal_actions[parsed.index] == example["action"]


def test_action_only_preprocessing_turns_both_prompt_and_answer_to_the_action_only_variant(rl4vlm_run):
    cfg, run = rl4vlm_run
    cfg.preprocess.action_only = True
    preprocess(cfg)
    for example in rows(run / "data/train.jsonl"):
        prompt = example["messages"][0]["content"][1]["text"]
        answer = json.loads(example["messages"][1]["content"][0]["text"])
        assert '"thoughts"' not in prompt and '"cards"' not in prompt and '"action":' in prompt
        assert answer == {"action": example["action"]}
