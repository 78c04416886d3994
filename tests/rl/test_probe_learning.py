"""PPO learns: the probe environments of bench/probe_learning.py, with their pass criteria.

- Constant: V(s) within 0.05 of 1; TwoStep: V(step 1) within 0.05 of γ and V(step 2) of 1 (values read
  from the saved checkpoint through the resume loading path);
- Color: from an image-blind SFT checkpoint (format only, ≈50% success) to ≥95% greedy success on fresh
  seeds, with every greedy answer still ending at its closing brace: with GAE, GRPO and GiGPO.
"""

from __future__ import annotations

import pytest
from bench.probe_learning import TOLERANCE, color_probe, value_probe


@pytest.mark.slow
@pytest.mark.parametrize("probe", ["constant", "twostep"])
def test_value_head_learns_the_discounted_return(tmp_path, probe):
    result = value_probe(probe, tmp_path, updates=16)
    assert len(result["values"]) == len(result["targets"])
    for value, target in zip(result["values"], result["targets"], strict=True):
        assert abs(value - target) <= TOLERANCE, result


@pytest.mark.slow
@pytest.mark.parametrize("advantage", ["gae", "grpo", "gigpo"])
def test_ppo_teaches_an_image_blind_sft_checkpoint_to_use_the_image(tmp_path, advantage):
    # grpo/gigpo: the 4 envs are one group of 4 (bench/probe_learning.py's GROUP_OVERRIDES), no value head.
    result = color_probe(tmp_path, sft_steps=150, updates=30, eval_episodes=64, advantage=advantage)
    # SFT learned the format, not the colour (greedy picks one action per colour from 50/50 data).
    assert result["greedy_success_sft"] < 0.9, result
    assert result["greedy_success_ppo"] >= 0.95, result
    assert result["invalid_rate_ppo"] == 0.0 and result["clean_endings_ppo"] >= 0.95, result
