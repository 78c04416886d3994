"""The rollout buffer against hand-made steps: layout, episode ids, advantages, normalisation, minibatches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmppo.rl.buffer import ADVANTAGES, RolloutBuffer, StepBatch


class Ppo:
    """The ``ppo`` settings the advantage estimators read (γ = λ = 0.5 keeps the arithmetic exact)."""

    gamma = 0.5
    gae_lambda = 0.5


def step_batch(lengths: list[int], first_id: int = 1, reference: bool = False) -> StepBatch:
    """Answers of ``lengths`` tokens with ids ``first_id, first_id + 1, ...``: the first a thought token,
    the rest action tokens; old log-prob ``-first_id`` and value ``first_id / 10`` per row."""
    rows, width = len(lengths), max(lengths)
    ids = torch.zeros(rows, width, dtype=torch.long)
    thought = torch.zeros(rows, width, dtype=torch.bool)
    action = torch.zeros(rows, width, dtype=torch.bool)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.arange(first_id, first_id + length)
        thought[row, 0] = True
        action[row, 1:length] = True
    answer = ids != 0
    return StepBatch(
        images=[np.full((2, 2, 3), first_id + row, dtype=np.uint8) for row in range(rows)],
        prompts=[f"prompt {first_id}.{row}" for row in range(rows)],
        answer_ids=ids,
        answer_lengths=torch.tensor(lengths),
        thought_mask=thought,
        action_mask=action,
        key_mask=torch.zeros(rows, width, dtype=torch.bool),
        old_logp=torch.full((rows,), -float(first_id)),
        values=torch.full((rows,), first_id / 10),
        ref_logp=torch.where(answer, -0.5, 0.0) if reference else None,
        texts=[f"answer {first_id}.{row}" for row in range(rows)],
        actions=[row for row in range(rows)],
        invalid=torch.zeros(rows, dtype=torch.bool),
        ended_with_eos=torch.ones(rows, dtype=torch.bool),
    )


def no_done(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.bool)


def test_steps_are_laid_out_step_major_and_samples_are_cut_to_their_longest_answer():
    buffer = RolloutBuffer(n_steps=2, n_envs=2, max_answer_tokens=5, reference=True)
    for t, lengths in enumerate(([3, 1], [2, 4])):
        buffer.add(step_batch(lengths, first_id=10 * (t + 1), reference=True), torch.zeros(2), no_done(2),
                   no_done(2), torch.zeros(2))  # fmt: skip
    buffer.finish(torch.zeros(2))
    samples = buffer.samples([1, 2])  # step 0 env 1 (1 token), step 1 env 0 (2 tokens)
    assert samples.prompts == ["prompt 10.1", "prompt 20.0"]
    assert [int(image[0, 0, 0]) for image in samples.images] == [11, 20]
    assert samples.answer_ids.tolist() == [[10, 0], [20, 21]]
    assert samples.answer_mask.tolist() == [[True, False], [True, True]]
    assert samples.thought_mask.tolist() == [[True, False], [True, False]]
    assert samples.action_mask.tolist() == [[False, False], [False, True]]
    assert samples.ref_logp.tolist() == [[-0.5, 0.0], [-0.5, -0.5]]
    assert samples.old_logp.tolist() == [-10.0, -20.0]
    assert samples.old_values.tolist() == pytest.approx([1.0, 2.0])
    assert buffer.answer_lengths.tolist() == [[3, 1], [2, 4]] and buffer.texts[3] == "answer 20.1"


def test_each_done_starts_a_new_episode_id_and_its_rewards_sum_per_episode():
    buffer = RolloutBuffer(n_steps=3, n_envs=2, max_answer_tokens=2)
    terminated = [[True, False], [False, False], [False, False]]
    truncated = [[False, False], [False, True], [False, False]]
    for t in range(3):
        buffer.add(step_batch([1, 1]), torch.tensor([1.0, 10.0]) * (t + 1), torch.tensor(terminated[t]),
                   torch.tensor(truncated[t]), torch.zeros(2))  # fmt: skip
    # env 0: episode 0 ends at t=0, episode 2 runs on; env 1: episode 1 is cut at t=1, episode 3 follows
    assert buffer.episode_ids.tolist() == [[0, 1], [2, 1], [2, 3]]
    assert buffer.episode_rewards().tolist() == [1.0, 30.0, 5.0, 30.0]


def test_gae_over_the_buffer_matches_the_hand_computed_rollout():
    # r = [1, 2, 3, 4], V = [0.5, 1, 1.5, 2], terminated at t=1, last value 4 (tests/rl/test_gae.py's case):
    # A = [1.25, 1.0, 3.5, 4.0], returns = A + V.
    buffer = RolloutBuffer(n_steps=4, n_envs=1, max_answer_tokens=1)
    for t, (reward, value) in enumerate(zip([1, 2, 3, 4], [0.5, 1.0, 1.5, 2.0], strict=True)):
        step = step_batch([1])
        step.values = torch.tensor([value])
        buffer.add(step, torch.tensor([float(reward)]), torch.tensor([t == 1]), no_done(1), torch.zeros(1))
    buffer.finish(torch.tensor([4.0]))
    buffer.compute_advantages(Ppo())
    assert buffer.advantages[:, 0].tolist() == [1.25, 1.0, 3.5, 4.0]
    assert buffer.returns[:, 0].tolist() == [1.75, 2.0, 5.0, 6.0]
    with pytest.raises(ValueError, match="'rloo'.*known: gae, grpo, gigpo"):
        buffer.compute_advantages(Ppo(), method="rloo")
    assert list(ADVANTAGES) == ["gae", "grpo", "gigpo"]  # the group estimators: tests/rl/test_groups.py


def test_normalisation_divides_by_the_statistics_the_moments_function_gives():
    buffer = RolloutBuffer(n_steps=2, n_envs=2, max_answer_tokens=1)
    buffer.advantages = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    buffer.normalize_advantages()  # this process's own: mean 3, population std sqrt(3.5)
    torch.testing.assert_close(buffer.advantages, (torch.tensor([[1.0, 2.0], [3.0, 6.0]]) - 3) / 3.5**0.5)
    buffer.advantages = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    # A data-parallel run's moments come from all ranks: here, a mean of 1 and a std of 2.
    buffer.normalize_advantages(moments=lambda adv: (torch.tensor(1.0), torch.tensor(2.0)))
    torch.testing.assert_close(buffer.advantages, torch.tensor([[0.0, 0.5], [1.0, 2.5]]))


def test_minibatches_follow_the_generators_permutation_and_drop_a_partial_last_one():
    buffer = RolloutBuffer(n_steps=3, n_envs=2, max_answer_tokens=2)
    for t in range(3):
        buffer.add(step_batch([1, 2], first_id=t + 1), torch.zeros(2), no_done(2), no_done(2), torch.zeros(2))
    minibatches = list(buffer.minibatches(4, np.random.default_rng(7)))
    assert len(minibatches) == 1  # 6 steps: one minibatch of 4, the other 2 dropped this epoch
    assert minibatches[0].indices.tolist() == np.random.default_rng(7).permutation(6)[:4].tolist()
    micro = list(minibatches[0].micro_batches(3))
    assert [len(samples) for samples in micro] == [3, 1]
    expected = [buffer.prompts[i] for i in minibatches[0].indices]
    assert [prompt for samples in micro for prompt in samples.prompts] == expected


def test_a_step_that_does_not_fit_is_refused():
    buffer = RolloutBuffer(n_steps=1, n_envs=2, max_answer_tokens=2)
    with pytest.raises(ValueError, match="up to 3 tokens"):
        buffer.add(step_batch([3, 1]), torch.zeros(2), no_done(2), no_done(2), torch.zeros(2))
    with pytest.raises(ValueError, match="0 of its 1 steps"):
        buffer.finish(torch.zeros(2))
    buffer.add(step_batch([2, 1]), torch.zeros(2), no_done(2), no_done(2), torch.zeros(2))
    with pytest.raises(ValueError, match="already holds its 1 steps"):
        buffer.add(step_batch([2, 1]), torch.zeros(2), no_done(2), no_done(2), torch.zeros(2))
