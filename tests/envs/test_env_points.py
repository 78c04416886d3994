"""EZPoints and Points24: formula rules, the exact evaluator and the completion solver.

The rules that differ between RL4VLM's (the default) and our variants are pinned in
``test_env_rl4vlm_rules.py``; these tests hold for both unless they say otherwise.
"""

from __future__ import annotations

import itertools
import random
from fractions import Fraction

import pytest

import vlmppo.envs as envs
from vlmppo.envs.cards.formula import evaluate, is_solvable, numbers_in
from vlmppo.envs.cards.solver import complete

EZ, P24 = "gym_cards/EZPoints-v0", "gym_cards/Points24-v0"


def table(env_id, cards, formula=(), **options):
    env = envs.make_env(env_id, **options)
    env.reset(seed=0)
    u = env.unwrapped
    u.cards, u.suits, u.formula = list(cards), ["clubs"] * len(cards), list(formula)
    return env


def press(env, token):
    return env.step(envs.get_adapter(env.spec.id).action_index(token))


def brute_24(numbers: list[Fraction], target=24) -> bool:
    """Independent check: combine any two numbers with any operator until one is left."""
    if len(numbers) == 1:
        return numbers[0] == target
    for i, j in itertools.permutations(range(len(numbers)), 2):
        rest = [n for k, n in enumerate(numbers) if k not in (i, j)]
        a, b = numbers[i], numbers[j]
        results = [a + b, a - b, a * b] + ([a / b] if b != 0 else [])
        if any(brute_24([*rest, r], target) for r in results):
            return True
    return False


# --- evaluator ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("formula", "value"),
    [("8 / ( 3 - 8 / 3 )", 24), ("2 + 3 * 4", 14), ("( 2 + 3 ) * 4", 20), ("10 - 4 - 3", 3),
     ("8 / 4 / 2", 1), ("1 / 3", Fraction(1, 3)), ("( ( 7 ) )", 7)],
)  # fmt: skip
def test_evaluator_follows_precedence_and_is_exact(formula, value):
    assert evaluate(formula.split()) == value


@pytest.mark.parametrize("formula", ["3 4", "3 +", "( 3", "3 )", "- 3", "", "3 / ( 2 - 2 )", "( )"])
def test_evaluator_rejects_malformed_formulas_and_division_by_zero(formula):
    assert evaluate(formula.split()) is None


# --- rules ----------------------------------------------------------------------------------------------
def test_ezpoints_correct_formula_pays_ten_and_terminates():
    env = table(EZ, [3, 4], ["3", "*", "4"])
    _, reward, terminated, _, info = press(env, "=")
    assert (reward, terminated, info["solved"]) == (10.0, True, True)


def test_ezpoints_face_cards_count_ten():
    env = table(EZ, [13, 2], ["10", "+"])
    assert press(env, "2")[1] == 0.0
    assert press(env, "=")[1] == 10.0


def test_wrong_value_and_unused_card_both_cost_one_on_submit():
    assert press(table(EZ, [3, 4], ["3", "+", "4"]), "=")[1:3] == (-1.0, True)
    assert press(table(P24, [4, 6, 1, 1], ["4", "*", "6"]), "=")[1:3] == (-1.0, True)


def test_number_not_on_the_table_or_used_up_costs_one_and_appends_a_blank():
    env = table(EZ, [3, 4], ["3"])
    _, reward, terminated, _, info = press(env, "5")
    assert (reward, terminated, info["formula"]) == (-1.0, False, ["3", " "])
    env = table(EZ, [3, 4], ["3", "+"])
    assert press(env, "3")[1] == -1.0 and env.unwrapped.formula == ["3", "+", " "]


def test_refuse_unavailable_leaves_the_formula_unchanged():
    env = table(EZ, [3, 4], ["3"], refuse_unavailable=True)
    _, reward, terminated, _, info = press(env, "5")
    assert (reward, terminated, info["formula"]) == (-1.0, False, ["3"])
    env = table(EZ, [3, 4], ["3", "+"], refuse_unavailable=True)
    assert press(env, "3")[1] == -1.0 and env.unwrapped.formula == ["3", "+"]


def test_operator_is_appended_for_free():
    _, reward, _, _, info = press(table(P24, [1, 2, 3, 4]), "(")
    assert (reward, info["formula"]) == (0.0, ["("])


@pytest.mark.parametrize("options", [{}, {"exact_arithmetic": True, "refuse_unavailable": True}])
def test_a_step_that_starts_with_an_over_long_formula_ends_the_game_terminated(options):
    # The limit is a rule of the game, not a time limit: terminated, so GAE does not bootstrap (issue 14).
    env = table(EZ, [3, 4], ["3", "+", "+", "+", "+"], **options)
    assert press(env, "*")[1:4] == (0.0, False, False)  # the 6th token is still appended
    assert press(env, "=")[1:4] == (-1.0, True, False)  # but a 6-token formula cannot be submitted
    env = table(P24, [3, 3, 8, 8], ["("] * 21, **options)
    assert press(env, "(")[1:4] == (-1.0, True, False)


def test_points24_exact_division_solution_is_accepted_with_exact_arithmetic():
    env = table(P24, [3, 3, 8, 8], "8 / ( 3 - 8 / 3 )".split(), exact_arithmetic=True)
    assert press(env, "=")[1] == 10.0


def test_points24_division_by_zero_is_a_wrong_formula():
    env = table(P24, [2, 2, 6, 6], "6 / ( 2 - 2 ) + 6".split())
    assert press(env, "=")[1] == -1.0


def test_solvable_only_deals_are_solvable_and_unsolvable_ones_come_without_it():
    for seed in range(25):
        for env_id, options in ((EZ, {}), (EZ, {"uniform_deal": True}), (P24, {"solvable_only": True})):
            _, info = envs.make_env(env_id, **options).reset(seed=seed)
            assert brute_24([Fraction(n) for n in info["numbers"]], info["target"])
    unsolvable = 0
    env = envs.make_env(P24)
    adapter = envs.get_adapter(P24)
    for seed in range(40):
        _, info = env.reset(seed=seed)
        if not brute_24([Fraction(n) for n in info["numbers"]]):
            unsolvable += 1
            choice = adapter.expert(env, info)
            assert choice.index is None and "cannot be completed" in choice.reasoning
    assert unsolvable > 0


# --- solver ---------------------------------------------------------------------------------------------
def test_solver_agrees_with_brute_force_on_random_deals():
    rng = random.Random(0)
    for _ in range(40):
        numbers = [rng.randint(1, 10) for _ in range(4)]
        assert is_solvable(numbers, 24) == brute_24([Fraction(n) for n in numbers])


@pytest.mark.parametrize(
    "numbers", [[1, 1, 1, 1], [1, 1, 1, 2], [1, 1, 2, 2], [9, 9, 10, 10], [10, 10, 10, 10]]
)
def test_known_unsolvable_deals_are_recognised(numbers):
    assert complete([], numbers, 24) is None and not brute_24([Fraction(n) for n in numbers])


@pytest.mark.parametrize(
    ("prefix", "numbers"),
    [("", [3, 3, 8, 8]), ("", [1, 5, 5, 5]), ("(", [3, 3, 8, 8]), ("( (", [1, 2, 3, 4]),
     ("( 10 - 4", [10, 4, 3, 1]), ("( 10", [10, 4, 3, 1]), ("2 * ( 3", [2, 3, 4, 5]), ("6 * ( 4", [4, 1, 6, 6])],
)  # fmt: skip
def test_solver_completes_diverse_prefixes_correctly(prefix, numbers):
    full = prefix.split() + complete(prefix.split(), numbers, 24)
    assert evaluate(full) == 24 and sorted(numbers_in(full)) == sorted(numbers) and len(full) <= 20


# Each checked against a brute-force search over every token string of up to 11 tokens.
@pytest.mark.parametrize(
    ("prefix", "numbers"),
    [("3 -", [3, 3, 8, 8]), (")", [1, 2, 3, 4]), ("10 * 10", [10, 10, 2, 2]), ("10 - 4", [10, 4, 3, 1]),
     ("4 /", [4, 1, 6, 6])],
)  # fmt: skip
def test_solver_recognises_prefixes_that_cannot_be_completed(prefix, numbers):
    assert complete(prefix.split(), numbers, 24) is None


def test_solver_respects_the_token_budget():
    assert complete(["("] * 12, [3, 3, 8, 8], 24) is None


@pytest.mark.parametrize(("env_id", "options"), [(EZ, {}), (P24, {"solvable_only": True})])
def test_expert_solves_a_random_sample_of_deals(env_id, options, play_expert):
    for seed in range(25):
        total, final, adapter, _ = play_expert(env_id, seed, **options)
        assert adapter.is_solved(total, final) and total == 10.0
        assert evaluate(final["formula"]) == final["target"]
        assert sorted(numbers_in(final["formula"])) == sorted(final["numbers"])


def test_expert_prompt_shows_the_formula_so_far():
    adapter = envs.get_adapter(P24)
    prompt = adapter.prompt({"formula": ["(", "3"], "cards": [3, 3, 8, 8], "numbers": [3, 3, 8, 8]})
    assert 'The formula so far is "( 3".' in prompt and '"/"' in prompt


def test_scores_follow_the_shortest_completion():
    adapter = envs.get_adapter(EZ)
    info = {"cards": [3, 4], "numbers": [3, 4], "target": 12, "solved": False}

    def score(before, token, after, reward=0.0, solved=False):
        return adapter.expert_score({**info, "formula": before}, adapter.action_index(token),
                                    {**info, "formula": after, "solved": solved}, reward)[0]  # fmt: skip

    assert score(["3"], "*", ["3", "*"]) == 8
    assert score(["3"], "+", ["3", "+"]) == 0  # 3 + 4 is 7: no way to 12 any more
    assert score(["3", "*", "4"], "=", ["3", "*", "4"], 10.0, True) == 10
    assert score(["3", "+"], "4", ["3", "+", "4"]) == 1  # already lost
    assert score(["3"], "7", ["3"], -1.0) == 0
