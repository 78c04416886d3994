"""The answer parser: JSON-ish text -> legal action index, invalid flag, span of the action value."""

from __future__ import annotations

import numpy as np
import pytest

from vlmppo.envs import get_adapter, list_envs, parse_action
from vlmppo.envs.parsing import format_answer

EZ = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "+", "*", "="]
GRID = ["turn left", "turn right", "move forward", "pick up", "toggle"]


def parse(text, legal=EZ, seed=0):
    return parse_action(text, legal, np.random.default_rng(seed))


def assert_valid(text, expected, legal=EZ):
    got = parse(text, legal)
    assert not got.invalid and legal[got.index] == expected
    start, end = got.span
    assert " ".join(text[start:end].split()).lower() == expected.lower()
    return got


def test_clean_json_gives_action_thoughts_and_span():
    got = assert_valid('{"thoughts": "3 and 4 make 12 by *", "action": "*"}', "*")
    assert got.thoughts == "3 and 4 make 12 by *"


def test_fenced_json_is_read():
    assert_valid('```json\n{"thoughts": "ok", "action": "10"}\n```', "10")


def test_extra_text_around_the_object_is_ignored():
    text = 'Sure! Here is my answer: {"thoughts": "I don\'t know", "action": "+"} Hope it helps.'
    assert_valid(text, "+")


def test_wrong_case_and_extra_spaces_still_match():
    assert_valid('{"action": "Move  Forward"}', "move forward", GRID)
    assert_valid('{"ACTION": "TOGGLE"}', "toggle", GRID)


def test_ten_is_not_one_and_one_is_not_ten():
    assert_valid('{"action": "10"}', "10")
    assert_valid('{"action": "1"}', "1")
    assert parse('{"action": "100"}').invalid


def test_illegal_action_is_invalid_with_random_legal_fallback():
    got = parse('{"thoughts": "x", "action": "11"}')
    assert got.invalid and got.span is None and 0 <= got.index < len(EZ)
    assert got.thoughts == "x"


def test_two_different_actions_are_ambiguous():
    assert parse('{"action": "+"} or maybe {"action": "*"}').invalid


def test_two_equal_actions_are_fine_and_span_points_at_the_first():
    text = '{"action": "+"} {"action": "+"}'
    assert parse(text).span == (text.index("+"), text.index("+") + 1)


def test_empty_string_is_invalid():
    got = parse("")
    assert got.invalid and got.thoughts is None and got.span is None


def test_non_json_text_is_invalid_even_if_it_names_an_action():
    assert parse("I choose the action + because it is best").invalid


def test_unicode_thoughts_keep_character_offsets():
    text = '{"thoughts": "数字は 3 と 4 🎴, so ×", "action": "*"}'
    got = assert_valid(text, "*")
    assert got.thoughts.startswith("数字")
    assert got.span == (len(text) - 3, len(text) - 2)


def test_unicode_lookalike_action_is_invalid():
    assert parse('{"action": "＋"}').invalid


def test_action_written_inside_the_thoughts_is_not_taken():
    text = '{"thoughts": "not \\"action\\": \\"=\\" yet", "action": "+"}'
    got = assert_valid(text, "+")
    assert got.thoughts == 'not "action": "=" yet'


def test_single_quotes_trailing_comma_and_bare_values_are_tolerated():
    assert_valid("{'thoughts': 'go', 'action': '=',}", "=")
    assert_valid('{"action": 10,}', "10")
    assert_valid("{action: toggle}", "toggle", GRID)


def test_answer_cut_off_before_closing_brace_still_parses():
    assert_valid('{"thoughts": "fine", "action": "pick up"', "pick up", GRID)


def test_span_excludes_quotes_and_padding():
    text = '{"action": "  turn left "}'
    got = parse(text, GRID)
    assert text[got.span[0] : got.span[1]] == "turn left"


def test_invalid_fallback_is_reproducible_from_the_rng():
    picks = [parse("nonsense", seed=7).index for _ in range(3)]
    assert len(set(picks)) == 1
    assert len({parse("nonsense", seed=s).index for s in range(40)}) > 1


def test_format_answer_action_only_has_no_thoughts():
    assert format_answer("+", None) == '{"action": "+"}'


@pytest.mark.parametrize(
    "row",
    [r for r in list_envs() if not r["id"].startswith("MiniGrid-")]
    + [r for r in list_envs() if r["id"] in ("MiniGrid-DoorKey-6x6-v0", "MiniGrid-Fetch-5x5-N2-v0")],
    ids=lambda r: r["id"],
)
def test_every_adapter_parses_its_own_formatted_answers(row):
    adapter = get_adapter(row["id"])
    rng = np.random.default_rng(0)
    for i in range(len(adapter.legal_actions)):
        for thoughts in ('card "10" and 2, then\nplus', None):
            text = adapter.format_answer(i, thoughts)
            got = adapter.parse(text, rng)
            assert (got.index, got.invalid, got.thoughts) == (i, False, thoughts)
            assert text[got.span[0] : got.span[1]] == adapter.legal_actions[i]
