"""PPO of a VLM agent (RL4VLM): the actor-critic, the rollout buffer, GAE, the clipped update, the loop.

``from vlmppo.rl import train_ppo`` is lazy: torch loads on first use.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name in ("train_ppo", "PpoResult"):
        from vlmppo.rl import ppo

        return getattr(ppo, name)
    raise AttributeError(f"module 'vlmppo.rl' has no attribute {name!r}")
