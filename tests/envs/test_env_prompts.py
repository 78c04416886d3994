"""Prompt styles: RL4VLM's prompts, its way of reading the action, and answers in either format."""

from __future__ import annotations

import json

import numpy as np
import pytest

import vlmppo.envs as envs
from vlmppo.config import load_config
from vlmppo.envs.rl4vlm import find_action
from vlmppo.errors import ConfigError, EnvError

CARDS = [
    "gym_cards/NumberLine-v0",
    "gym_cards/Blackjack-v0",
    "gym_cards/EZPoints-v0",
    "gym_cards/Points24-v0",
]
EZ_ACTIONS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "+", "*", "="]
# The fields RL4VLM's prompts asked for before "thoughts" (VLM_PPO/a2c_ppo_acktr/rl_utils.py).
PAPER_FIELDS = {
    "gym_cards/NumberLine-v0": ["current number", "target number"],
    "gym_cards/Blackjack-v0": [],
    "gym_cards/EZPoints-v0": ["cards", "current formula"],
    "gym_cards/Points24-v0": ["cards", "current formula"],
}


def find(text, legal=EZ_ACTIONS, tens_first=True, seed=0):
    return find_action(text, legal, np.random.default_rng(seed), tens_first=tens_first)


def found(text, legal=EZ_ACTIONS, tens_first=True):
    got = find(text, legal, tens_first)
    return None if got.invalid else legal[got.index]


# --- RL4VLM's action finder ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "action"),
    [
        ('{"cards": [3, 4], "current formula": "3*", "thoughts": "3 times 4", "action": "4"}', "4"),
        ('Let me think: 3+9 is wrong.\n"action": "*" is what I pick', "*"),  # prose around the key
        ('{"ACTION": "10"}', "10"),  # lower-cased first; "10" before "1"
        ('"action": 10', "10"),
        ('"action":"="}', "="),
        ("no key at all, so the last character counts: +", "+"),
        ('"action": "1" or "2"', None),  # two actions: a random one, flagged
        ('"action": "10" and then "1"', None),
        ('"action" : "+"', None),  # a space before the colon: no key, last character '"'
        ("", None),
    ],
)
def test_find_action_reads_answers_as_rl4vlm_did(text, action):
    assert found(text) == action


def test_find_action_for_words_and_its_span():
    text = 'My total is 19, the dealer shows 10.\n{"thoughts": "hit or stand?", "action": "Stand"}'
    got = find(text, ["stand", "hit"], tens_first=False)
    assert not got.invalid and got.index == 0 and text[got.span[0] : got.span[1]] == "Stand"
    assert got.thoughts == "hit or stand?"
    assert found("I choose hit", ["stand", "hit"], tens_first=False) is None  # no key: only the last "t"


def test_find_action_falls_back_reproducibly_from_the_rng():
    assert len({find("nonsense", seed=7).index for _ in range(3)}) == 1
    assert len({find("nonsense", seed=s).index for s in range(40)}) > 1


# --- prompts ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", CARDS)
def test_rl4vlm_prompt_asks_for_the_papers_fields_and_the_action_only_one_for_the_action(env_id):
    env = envs.make_env(env_id)
    _, info = env.reset(seed=0)
    prompt = envs.get_adapter(env_id, prompt="rl4vlm").prompt(info)
    keys = [*PAPER_FIELDS[env_id], "thoughts", "action"]
    positions = [prompt.index(f'"{key}":') for key in keys]
    assert positions == sorted(positions)
    short = envs.get_adapter(env_id, prompt="rl4vlm_action_only").prompt(info)
    assert '"action":' in short and '"thoughts"' not in short
    assert all(f'"{key}"' not in short for key in PAPER_FIELDS[env_id])


def test_rl4vlm_points_prompt_shows_the_formula_joined_without_spaces():
    adapter = envs.get_adapter("gym_cards/Points24-v0", prompt="rl4vlm")
    info = {"cards": [3, 4, 8, 12], "numbers": [3, 4, 8, 10], "formula": ["(", "10", "-", "4", " "]}
    prompt = adapter.prompt(info)
    assert "The current formula is: (10-4 ." in prompt and "'J', 'Q' and 'K' count as '10'" in prompt
    assert "evaluates to 24" in prompt


def test_our_prompt_stays_available_and_is_the_style_of_our_parser():
    adapter = envs.get_adapter("gym_cards/EZPoints-v0", prompt="cot")
    assert "Legal actions:" in adapter.prompt({"formula": ["3"], "cards": [3, 4], "numbers": [3, 4]})
    # Our parser wants exactly one legal action as the "action" value, which RL4VLM's does not.
    text = '{"action": "the number 4"}'
    assert adapter.parse(text, np.random.default_rng(0)).invalid
    assert (
        not envs.get_adapter("gym_cards/EZPoints-v0", prompt="rl4vlm")
        .parse(text, np.random.default_rng(0))
        .invalid
    )


def test_rl4vlm_prompt_is_refused_where_the_paper_had_none():
    with pytest.raises(EnvError, match="gym_cards tasks only"):
        envs.get_adapter("MiniGrid-DoorKey-6x6-v0", prompt="rl4vlm")
    with pytest.raises(ConfigError, match="env.prompt"):
        load_config("minigrid-doorkey-tiny", overrides=["env.prompt=rl4vlm"])


def test_card_presets_for_real_models_use_the_rl4vlm_prompt():
    for name in ("numberline", "blackjack", "ezpoints", "points24"):
        for family in ("qwen", "llava"):
            assert load_config(f"{name}-{family}").env.prompt == "rl4vlm"


# --- answers in the format the prompt asks for -----------------------------------------------------------------
@pytest.mark.parametrize("env_id", CARDS)
def test_expert_answers_in_rl4vlm_format_carry_the_states_fields_and_parse_back(env_id):
    adapter = envs.get_adapter(env_id, prompt="rl4vlm")
    env = envs.make_env(env_id, **({"solvable_only": True} if "Points24" in env_id else {}))
    rng = np.random.default_rng(0)
    for seed in range(5):
        _, info = env.reset(seed=seed)
        expert = adapter.expert(env, info)
        answer = adapter.format_answer(expert.index, expert.reasoning, info)
        fields = json.loads(answer)
        assert list(fields) == [*PAPER_FIELDS[env_id], "thoughts", "action"]
        if "current number" in fields:
            assert (fields["current number"], fields["target number"]) == (
                str(info["current"]),
                str(info["target"]),
            )
        if "cards" in fields:
            assert (fields["cards"], fields["current formula"]) == (info["numbers"], "".join(info["formula"]))
        parsed = adapter.parse(answer, rng)
        assert (parsed.index, parsed.invalid, parsed.thoughts) == (expert.index, False, expert.reasoning)
        assert answer[parsed.span[0] : parsed.span[1]] == adapter.legal_actions[expert.index]
        short = adapter.format_answer(expert.index, None)
        assert json.loads(short) == {"action": adapter.legal_actions[expert.index]}


@pytest.mark.parametrize("env_id", CARDS)
def test_every_rl4vlm_answer_parses_back_to_its_action(env_id):
    adapter = envs.get_adapter(env_id, prompt="rl4vlm")
    _, info = envs.make_env(env_id).reset(seed=0)
    rng = np.random.default_rng(0)
    for i, action in enumerate(adapter.legal_actions):
        for thoughts in ('card "10" and 2: "action": 1', None):
            text = adapter.format_answer(i, thoughts, info)
            got = adapter.parse(text, rng)
            assert (got.index, got.invalid) == (i, False) and text[got.span[0] : got.span[1]] == action


@pytest.mark.parametrize(
    "text",
    ['{"thoughts": "Go", "Action": "+"}', "ΣΑΣ ACTION: '-' İ", "plain ASCII, no key", "", "ﬁ \u0130 Σ."],
)
def test_lowering_for_the_paper_parser_keeps_every_offset(text):
    """The ASCII shortcut of ``_lower_same_length`` gives what lowering character by character gives."""
    from vlmppo.envs.rl4vlm import _lower_same_length

    by_character = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    assert _lower_same_length(text) == by_character and len(by_character) == len(text)
