"""Data-parallel PPO on two CPU ranks (gloo): the same gradient and advantage statistics as one process."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmppo.config import config_to_yaml, load_config

pytestmark = pytest.mark.e2e  # launches processes (torchrun, two gloo ranks)

WORKER = Path(__file__).with_name("data_parallel_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def two_ranks(*args, timeout=300):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*TORCHRUN, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def rollout(tmp_path_factory):
    """A real 8-step rollout of the tiny Qwen2-VL with a fresh LoRA on probe-color (4 envs x 2 steps), the
    un-normalised advantages computed, and its config."""
    from vlmppo.envs import make_vec_env_from_config
    from vlmppo.rl.rollout import collect_rollout
    from vlmppo.rl.startup import build_policy

    tmp = tmp_path_factory.mktemp("dp")
    cfg = load_config(
        "probe-color-tiny",
        overrides=["env.n_envs=4", "ppo.n_steps=2", "ppo.minibatch_size=8", "ppo.micro_batch_size=2",
                   "ppo.max_new_tokens=12", "ppo.ent_coef=0.01", f"run.output_dir={tmp}"],
    )  # fmt: skip
    config = tmp / "config.yaml"
    config.write_text(config_to_yaml(cfg))
    torch.manual_seed(cfg.run.seed)
    policy = build_policy(cfg, "cpu")
    vec = make_vec_env_from_config(cfg.env, cfg.env.n_envs, cfg.run.seed)
    obs, infos = vec.reset()
    buffer, _, _ = collect_rollout(policy, vec, obs, infos, cfg)
    buffer.compute_advantages(cfg.ppo)
    path = tmp / "buffer.pkl"
    path.write_bytes(pickle.dumps(buffer))
    return tmp, config, path, buffer


def test_a_minibatch_split_over_two_ranks_has_the_one_process_gradient(rollout):
    from tests.rl.data_parallel_worker import run

    tmp, config, buffer_path, buffer = rollout
    run(config, buffer_path, tmp / "one.pt")  # the reference: this process, the whole minibatch
    out = two_ranks(WORKER, config, buffer_path, tmp / "two.pt")
    assert out.returncode == 0, out.stderr[-3000:]
    one, two = torch.load(tmp / "one.pt"), torch.load(tmp / "two.pt")
    assert one["finite"] and two["finite"]
    assert (one["micro_batches"], two["micro_batches"]) == (4, 2)  # each rank: 2 micro-batches of 2
    # The advantage statistics all-reduced over the halves are the whole rollout's.
    assert two["mean"] == pytest.approx(one["mean"], abs=1e-6)
    assert two["std"] == pytest.approx(one["std"], rel=1e-6)
    assert one["mean"] == pytest.approx(float(buffer.advantages.mean()), abs=1e-6)
    assert one["std"] == pytest.approx(float(buffer.advantages.std(unbiased=False)), rel=1e-6)
    assert set(one["grads"]) == set(two["grads"]) and len(one["grads"]) > 4
    worst = max((one["grads"][k] - two["grads"][k]).abs().max().item() for k in one["grads"])
    print(f"max |gradient difference| one process vs two ranks: {worst:.1e}")
    assert worst < 1e-5, worst
    # A fresh LoRA's B is zero, so A has no gradient yet; B and the value head do, and that is what is compared.
    moved = {k for k, g in one["grads"].items() if g.abs().sum() > 0}
    assert moved and all(k in moved for k in one["grads"] if "lora_B" in k or k.startswith("value_head"))
    # Gradient accumulation all-reduced once per bucket for the minibatch, not once per micro-batch.
    assert two["reduces"] == 1
    # The logged row: rates averaged over the ranks that have one, counts and throughput summed, the slowest
    # rank's time, the shared counters as they are; a signal on one rank stops both.
    assert two["metrics"] == {
        "update": 3, "rollout/success_rate": 0.5, "rollout/reward_mean": 0.5, "rollout/episodes": 7,
        "time/rollout_s": 2.0, "time/env_steps_per_s": 20.0,
    }  # fmt: skip
    assert two["stop"] is True


def test_one_process_moments_are_the_plain_ones():
    from vlmppo.accel import make_accelerator
    from vlmppo.rl.distributed import all_reduced_moments
    from vlmppo.rl.gae import advantage_moments

    assert all_reduced_moments(make_accelerator("cpu", "no")) is advantage_moments
    assert np.isfinite(float(advantage_moments(torch.arange(5.0))[1]))
