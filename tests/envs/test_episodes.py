"""The episode loop of collect and eval: every queued episode runs to its end, on fewer envs, in env order."""

from __future__ import annotations

import numpy as np

import vlmppo.envs as envs
from vlmppo.envs.episodes import jsonable, play_episodes

ENV = "gym_cards/NumberLine-v0"


def test_every_queued_episode_is_played_to_its_end_on_fewer_envs_in_env_order():
    made, batches, ended = [], [], {}
    rng = np.random.default_rng(0)

    def make():
        made.append(envs.make_env(ENV, max_episode_steps=5))
        return made[-1]

    def decide(running):
        batches.append([(made.index(e.env), e.key) for e in running])
        return [(int(rng.integers(2)), f"note {e.key}") for e in running]

    def record(episode, note, outcome):
        return {"step": len(episode.rows), "state": episode.info, "before": episode.total, "note": note,
                "reward": outcome.reward, "done": outcome.terminated or outcome.truncated}  # fmt: skip

    def end(episode, outcome):
        ended[episode.key] = episode

    play_episodes(
        make,
        3,
        range(7),
        reset_seed=lambda key: 100 + key,
        decide=decide,
        record=record,
        begin=lambda e: setattr(e, "frames", [e.obs]),
        end=end,
    )
    assert len(made) == 3 and sorted(ended) == list(range(7))
    assert [key for _, key in batches[0]] == [0, 1, 2]
    assert all([slot for slot, _ in b] == sorted(slot for slot, _ in b) for b in batches)  # env order kept
    for key, episode in ended.items():
        rows = episode.rows
        assert [r["step"] for r in rows] == list(range(len(rows))) and rows[-1]["done"]
        assert not any(r["done"] for r in rows[:-1])
        assert all(r["note"] == f"note {key}" for r in rows)
        assert [r["before"] for r in rows] == list(np.cumsum([0.0] + [r["reward"] for r in rows])[:-1])
        assert episode.total == sum(r["reward"] for r in rows)
        assert len(episode.frames) == len(rows) + 1
        first, info = envs.make_env(ENV, max_episode_steps=5).reset(seed=100 + key)
        assert (
            np.array_equal(episode.frames[0], first) and rows[0]["state"] == info
        )  # reset with its own seed


def test_an_empty_queue_builds_no_env():
    made = []
    play_episodes(lambda: made.append(1), 4, [], reset_seed=int, decide=list, record=dict)
    assert made == []


def test_jsonable_keeps_the_json_part_of_an_info_and_drops_final_keys():
    info = {"pos": np.int64(3), "grid": np.zeros((2, 2)), "big": np.zeros(100), "final_obs": 1, "t": (1, 2.5)}
    assert jsonable(info) == {"pos": 3, "grid": [[0.0, 0.0], [0.0, 0.0]], "big": None, "t": [1, 2.5]}
