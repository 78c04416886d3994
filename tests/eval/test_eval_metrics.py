"""The Wilson interval against hand-computed values, and the metrics summary on hand-made episodes."""

from __future__ import annotations

import math

import pytest

from vlmppo.eval.metrics import Z95, summarize, wilson_interval


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # Worked by hand with z = 1.96 (z^2 = 3.8416):
        # 5/10: centre (0.5 + 0.19208) / 1.38416 = 0.5, half 1.96 * sqrt(0.025 + 0.009604) / 1.38416 = 0.26341
        (5, 10, 0.23659, 0.76341),
        # 0/10: upper = z^2 / (n + z^2) = 3.8416 / 13.8416
        (0, 10, 0.0, 0.27754),
        # 10/10: lower = n / (n + z^2) = 10 / 13.8416
        (10, 10, 0.72246, 1.0),
        # 1/20: centre 0.14604 / 1.19208 = 0.12251, half 1.96 * sqrt(0.002375 + 0.002401) / 1.19208 = 0.11363
        (1, 20, 0.00888, 0.23614),
        # 1/1: lower = 1 / (1 + 3.8416)
        (1, 1, 0.20654, 1.0),
    ],
)
def test_wilson_interval_matches_hand_computed_values(successes, n, low, high):
    got_low, got_high = wilson_interval(successes, n, z=1.96)
    assert got_low == pytest.approx(low, abs=5e-5)
    assert got_high == pytest.approx(high, abs=5e-5)


def test_wilson_default_z_is_the_two_sided_95_percent_normal_quantile():
    assert 0.5 * math.erfc(Z95 / math.sqrt(2)) == pytest.approx(0.025, rel=1e-12)


def test_wilson_interval_narrows_with_more_episodes_and_contains_the_rate():
    widths = []
    for n in (10, 100, 1000):
        low, high = wilson_interval(3 * n // 10, n)
        assert low < 0.3 < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


@pytest.mark.parametrize(("successes", "n"), [(0, 0), (-1, 5), (6, 5)])
def test_wilson_interval_rejects_impossible_counts(successes, n):
    with pytest.raises(ValueError):
        wilson_interval(successes, n)


def test_summary_has_per_seed_breakdown_invalid_rate_and_tokens():
    episodes = [
        {"seed": 0, "return": 1.0, "length": 2, "success": True, "solved": True},
        {"seed": 0, "return": -1.0, "length": 4, "success": False, "solved": True},  # reached after a detour
        {"seed": 1, "return": 1.0, "length": 1, "success": True, "solved": True},
    ]
    steps = [{"invalid": i < 2, "action": "+" if i % 3 else "-", "answer_tokens": 10 + i} for i in range(7)]
    m = summarize(episodes, steps, legal_actions=["-", "+"], wall_s=2.0)
    assert m["successes"] == 2 and m["success_rate"] == pytest.approx(2 / 3)
    assert m["success_ci95"] == pytest.approx(list(wilson_interval(2, 3)))
    assert (
        m["solved"] == 3
        and m["solved_rate"] == 1.0
        and m["solved_ci95"] == pytest.approx([wilson_interval(3, 3)[0], 1])
    )
    assert m["return_mean"] == pytest.approx(1 / 3) and m["return_median"] == 1.0
    assert m["length_mean"] == pytest.approx(7 / 3)
    assert m["invalid_action_rate"] == pytest.approx(2 / 7)
    assert m["tokens_per_answer"] == pytest.approx(13.0)
    assert m["action_counts"] == {"-": 3, "+": 4}
    assert m["env_steps"] == 7 and m["env_steps_per_s"] == pytest.approx(3.5)
    assert m["per_seed"]["0"]["success_rate"] == 0.5 and m["per_seed"]["0"]["length_mean"] == 3
    assert m["per_seed"]["1"]["success_rate"] == 1.0 and m["per_seed"]["1"]["episodes"] == 1
