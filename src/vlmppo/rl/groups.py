"""Critic-free advantages over groups of episodes that start from the same state: GRPO and GiGPO.

Pure tensor math over one rollout's ``[T, N]`` layout (``rl/buffer.py`` calls it), no model or env.

The rollout comes from grouped resets (``envs/vec_env.py``): env ``n`` belongs to group ``n // G``; every
rollout starts a new round for every group, all members of a group start each round from the same seed,
and a member whose episode ended waits (``idle`` steps) until its whole group has finished the round. So
the ``j``-th episode of env ``n`` in this rollout is round ``j`` of its group, and the members' ``j``-th
episodes are the group (Feng et al. 2025, arXiv 2505.10978, §4.1: "episode-level groups" from one initial
state).

Feng et al.'s equations, as implemented here (``F`` is the group's std, or 1 with ``norm="mean"``):

- Eq. 3, episode level: ``A^E(τ_i) = (R(τ_i) − mean_j R(τ_j)) / F({R(τ_j)})`` with ``R(τ) = Σ_t r_t``, given to
  every step of ``τ_i`` (GRPO is this alone);
- Eq. 6-7, step level: the steps of a group's episodes whose observation is the same (an *anchor state*;
  here the hash of the frame and the prompt, i.e. what the policy saw) form a sub-group; each step's
  discounted return-to-go ``R_t = Σ_k γ^k r_{t+k}`` (to its episode's end) is normalised within it:
  ``A^S(a_t) = (R_t − mean R) / F({R})``;
- Eq. 8: ``A(a_t) = A^E(τ_i) + ω · A^S(a_t)``.

Edge cases, each tested (tests/rl/test_groups.py):

- a one-member group or sub-group, and a group whose returns are all equal (zero spread), give 0: there is
  nothing to compare with (``F`` gets ``EPS`` so that 0 / 0 is 0);
- episodes of different lengths: returns are sums over each episode, whatever its length; the members that
  finished first wait, their waiting steps are ``idle`` and get 0;
- truncation (a time limit) ends an episode like termination: there is no critic to bootstrap from, so
  its return is what it collected, and its return-to-go stops at the cut;
- rollout boundaries: a round still running when the rollout ends is left out whole (all its members'
  steps get 0, also those of members that already finished: comparing only the early finishers would
  favour short episodes); the next rollout starts a new round, so no episode straddles two rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

EPS = 1e-6


@dataclass
class Episode:
    """One episode of a rollout: env ``env``, steps ``start`` to ``end`` (inclusive), ``finished`` when its last
    step ended it (else the rollout's end cut it), ``round`` its index among its env's episodes here."""

    env: int
    start: int
    end: int
    round: int
    finished: bool


@dataclass
class GroupAdvantages:
    """``advantages`` and ``returns`` ``[T, N]`` fp32 (returns: the discounted return-to-go), and statistics."""

    advantages: Tensor
    returns: Tensor
    stats: dict[str, float] = field(default_factory=dict)


def split_episodes(done: Tensor, idle: Tensor) -> list[Episode]:
    """The episodes of a ``[T, N]`` rollout: runs of non-idle steps of one env, each ended by a done flag or
    by the rollout's end.

    Args:
        done: ``[T, N]`` bool, terminated or truncated at step t.
        idle: ``[T, N]`` bool, the env was waiting for its group (no episode step).
    """
    steps, n_envs = done.shape
    episodes = []
    for env in range(n_envs):
        start, round_ = None, 0
        for t in range(steps):
            if idle[t, env]:
                continue
            start = t if start is None else start
            if done[t, env]:
                episodes.append(Episode(env, start, t, round_, True))
                start, round_ = None, round_ + 1
        if start is not None:
            episodes.append(Episode(env, start, steps - 1, round_, False))
    return episodes


def relative(values: Tensor, norm: str) -> Tensor:
    """``values`` ``[M]`` minus their mean, divided by their std (Bessel-corrected, as GRPO's) with
    ``norm="std"``; zeros for one value or equal values."""
    if len(values) < 2:
        return torch.zeros_like(values)
    centred = values - values.mean()
    return centred / (values.std() + EPS) if norm == "std" else centred


def returns_to_go(rewards: Tensor, gamma: float) -> Tensor:
    """``[L]`` rewards of one episode -> ``[L]`` ``Σ_k γ^k r_{t+k}`` to its end."""
    out, running = torch.zeros_like(rewards), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def complete_groups(episodes: list[Episode], group_size: int) -> dict[tuple[int, int], list[Episode]]:
    """``(group, round) -> its G episodes``, for the rounds every member finished within the rollout."""
    groups: dict[tuple[int, int], list[Episode]] = {}
    for episode in episodes:
        groups.setdefault((episode.env // group_size, episode.round), []).append(episode)
    return {
        key: members
        for key, members in groups.items()
        if len(members) == group_size and all(member.finished for member in members)
    }


def group_advantages(
    rewards: Tensor,
    done: Tensor,
    idle: Tensor,
    group_size: int,
    *,
    norm: str = "std",
    gamma: float = 1.0,
    state_keys: Tensor | None = None,
    step_weight: float = 0.0,
) -> GroupAdvantages:
    """GRPO (``state_keys`` None) or GiGPO advantages of a grouped rollout; see the module docstring.

    Args:
        rewards: ``[T, N]`` float, each step's reward (idle steps' are ignored).
        done: ``[T, N]`` bool, terminated or truncated at step t.
        idle: ``[T, N]`` bool, the env waited for its group at step t.
        group_size: ``G``; env ``n`` is in group ``n // G``.
        norm: ``std`` (divide by the group's std) or ``mean`` (only subtract the mean), at both levels.
        gamma: γ of the step-level return-to-go.
        state_keys: ``[T, N]`` int64 hashes of each step's observation (GiGPO's anchor states), or None.
        step_weight: ω, the step-level term's weight.

    Returns:
        Advantages ``[T, N]`` (0 where a step has no group signal), the return-to-go ``[T, N]``, and the
        ``rollout/group_*`` statistics.
    """
    rewards = rewards.detach().to(torch.float32).cpu()
    done, idle = done.cpu().bool(), idle.cpu().bool()
    advantages, to_go = torch.zeros_like(rewards), torch.zeros_like(rewards)
    groups = complete_groups(split_episodes(done, idle), group_size)
    spreads, anchors = [], {}
    for (group, round_), members in groups.items():
        totals = torch.stack([rewards[m.start : m.end + 1, m.env].sum() for m in members])
        spreads.append(float(totals.std()) if len(totals) > 1 else 0.0)
        for member, episode_advantage in zip(members, relative(totals, norm), strict=True):
            span = slice(member.start, member.end + 1)
            advantages[span, member.env] = episode_advantage
            to_go[span, member.env] = returns_to_go(rewards[span, member.env], gamma)
            if state_keys is not None:
                for t in range(member.start, member.end + 1):
                    anchors.setdefault((group, round_, int(state_keys[t, member.env])), []).append(
                        (t, member.env)
                    )
    for steps in anchors.values():
        index_t, index_n = torch.tensor([t for t, _ in steps]), torch.tensor([n for _, n in steps])
        advantages[index_t, index_n] += step_weight * relative(to_go[index_t, index_n], norm)
    stats = {
        "rollout/group_count": float(len(groups)),
        "rollout/group_return_std": sum(spreads) / len(spreads) if spreads else float("nan"),
        "rollout/group_zero_spread_frac": (
            sum(spread == 0.0 for spread in spreads) / len(spreads) if spreads else float("nan")
        ),
        "rollout/group_idle_frac": float(idle.float().mean()),
        "rollout/group_unused_frac": 1.0 - sum(len(m) for m in _steps(groups)) / rewards.numel(),
    }
    if state_keys is not None:
        sizes = [len(steps) for steps in anchors.values()]
        stats["rollout/step_groups"] = float(sum(size > 1 for size in sizes))
        stats["rollout/step_group_size"] = sum(size for size in sizes if size > 1) / max(
            1, sum(size > 1 for size in sizes)
        )
    return GroupAdvantages(advantages, to_go, stats)


def _steps(groups: dict[tuple[int, int], list[Episode]]) -> list[range]:
    return [range(m.start, m.end + 1) for members in groups.values() for m in members]
