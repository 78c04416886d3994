"""Blackjack rules (Gymnasium's, infinite deck) and the basic-strategy expert."""

from __future__ import annotations

import pytest

import vlmppo.envs as envs
from vlmppo.envs.cards.blackjack import basic_strategy, hand_value, is_natural

STAND, HIT = 0, 1


def table(player, dealer, **options):
    env = envs.make_env("gym_cards/Blackjack-v0", **options)
    env.reset(seed=0)
    u = env.unwrapped
    u.player, u.player_suits = list(player), ["spades"] * len(player)
    u.dealer, u.dealer_suits = list(dealer), ["hearts"] * len(dealer)
    return env


def test_hand_value_counts_one_ace_as_eleven_when_it_fits():
    assert hand_value([1, 13]) == (21, True)
    assert hand_value([1, 1, 9]) == (21, True)
    assert hand_value([1, 9, 5]) == (15, False)
    assert hand_value([12, 13]) == (20, False)
    assert is_natural([1, 12]) and not is_natural([1, 5, 5])


def test_hit_that_busts_costs_one_and_ends_the_round():
    env = table([10, 10, 1], [10, 7])  # hard 21: any card busts
    _, reward, terminated, _, info = env.step(HIT)
    assert (reward, terminated, len(info["player_cards"])) == (-1.0, True, 4)
    assert len(info["dealer_cards"]) == 2  # the hole card is shown once the round is over


def test_hit_without_bust_pays_zero_and_keeps_the_hole_card_hidden():
    env = table([2, 3], [10, 7])
    _, reward, terminated, _, info = env.step(HIT)
    assert (reward, terminated, info["dealer_cards"]) == (0.0, False, [10])


@pytest.mark.parametrize(
    ("player", "dealer", "reward"),
    [
        ([10, 10], [10, 8], 1.0),  # higher total wins
        ([10, 7], [10, 9], -1.0),  # lower total loses
        ([10, 8], [13, 8], 0.0),  # equal totals draw
        ([10, 2], [10, 6, 10], 1.0),  # busted dealer loses to any standing hand
        ([10, 8], [1, 6], 1.0),  # the dealer stands on soft 17
        ([10, 7], [1, 6], 0.0),
    ],
)
def test_stand_compares_with_the_dealer(player, dealer, reward):
    _, got, terminated, _, info = table(player, dealer).step(STAND)
    assert (got, terminated) == (reward, True)
    assert info["dealer_cards"] == dealer


def test_dealer_draws_to_seventeen_or_more_on_stand():
    for seed in range(20):
        env = envs.make_env("gym_cards/Blackjack-v0")
        env.reset(seed=seed)
        *_, info = env.step(STAND)
        assert hand_value(info["dealer_cards"])[0] >= 17


@pytest.mark.parametrize(
    ("options", "player", "dealer", "reward"),
    [
        ({}, [1, 13], [10, 9], 1.0),  # naturals pay like any win by default
        ({"natural": True}, [1, 13], [10, 9], 1.5),
        ({"natural": True}, [1, 13], [1, 10], 0.0),  # natural against natural is a draw
        ({"natural": True}, [1, 5, 5], [10, 9], 1.0),  # three-card 21 is no natural
        ({"sab": True}, [1, 10], [10, 10, 1], 1.0),  # natural beats a three-card 21
        ({}, [1, 10], [10, 10, 1], 0.0),
        ({"sab": True}, [1, 10], [13, 1], 0.0),
        ({"sab": True, "natural": True}, [1, 10], [10, 9], 1.0),  # sab wins over natural, as in Gymnasium
    ],
)
def test_natural_and_sab_options(options, player, dealer, reward):
    assert table(player, dealer, **options).step(STAND)[1] == reward


@pytest.mark.parametrize(
    ("total", "soft", "up", "action"),
    [
        (16, False, 10, "hit"), (16, False, 6, "stand"), (13, False, 2, "stand"), (12, False, 2, "hit"),
        (12, False, 3, "hit"), (12, False, 4, "stand"), (12, False, 7, "hit"), (11, False, 1, "hit"),
        (17, False, 1, "stand"), (20, False, 10, "stand"), (17, True, 6, "hit"), (18, True, 8, "stand"),
        (18, True, 9, "hit"), (18, True, 1, "hit"), (19, True, 10, "stand"), (21, True, 1, "stand"),
    ],
)  # fmt: skip
def test_basic_strategy_table_spot_checks(total, soft, up, action):
    assert basic_strategy(total, soft, up) == action


def test_expert_follows_the_table_and_explains_it():
    adapter = envs.get_adapter("gym_cards/Blackjack-v0")
    info = {
        "player_cards": [10, 6],
        "player_sum": 16,
        "usable_ace": False,
        "dealer_up": 10,
        "dealer_cards": [13],
    }
    choice = adapter.expert(None, info)
    assert adapter.legal_actions[choice.index] == "hit"
    assert "hard 16" in choice.reasoning and "dealer shows 10" in choice.reasoning


def test_scores_judge_the_decision_not_the_card():
    adapter = envs.get_adapter("gym_cards/Blackjack-v0")
    before = {"player_sum": 16, "usable_ace": False, "dealer_up": 10}
    assert adapter.expert_score(before, HIT, {}, -1.0)[0] == 8  # right call, unlucky card
    assert adapter.expert_score(before, STAND, {}, 1.0)[0] == 0  # wrong call, lucky dealer
    assert adapter.expert_score({**before, "dealer_up": 6}, STAND, {}, 1.0)[0] == 10
