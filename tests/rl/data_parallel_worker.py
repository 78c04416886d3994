"""One rank's share of a PPO minibatch, for tests/rl/test_data_parallel.py (run under torchrun, or called in
the test's own process for the one-process reference).

Given a pickled rollout buffer (un-normalised advantages) and a config, rank r of W takes the r-th of W equal
slices of the flat steps: it normalises its slice's advantages with the all-reduced statistics, then
accumulates the gradient of its slice as one minibatch through the engine's own ``accumulate_minibatch``
(micro-batches, DDP with ``no_sync`` on all but the last). Rank 0 saves the gradients, the statistics and the
number of gradient all-reduces DDP made, and a metrics row and a stop flag reduced over the ranks.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import torch


def run(config_path: Path, buffer_path: Path, out_path: Path) -> None:
    from vlmppo.accel import make_accelerator
    from vlmppo.config import load_config
    from vlmppo.rl.buffer import Minibatch
    from vlmppo.rl.distributed import ScoringModule, agree_stop, all_reduced_moments, reduce_metrics
    from vlmppo.rl.gae import normalize_advantages
    from vlmppo.rl.startup import build_policy
    from vlmppo.rl.update import accumulate_minibatch

    cfg = load_config(str(config_path))
    accelerator = make_accelerator("cpu", "no")
    world, rank = accelerator.num_processes, accelerator.process_index
    torch.manual_seed(cfg.run.seed)
    policy = build_policy(cfg, "cpu", None, accelerator)
    buffer = pickle.loads(buffer_path.read_bytes())
    share = buffer.size // world
    mine = np.arange(rank * share, (rank + 1) * share)
    flat = buffer.advantages.reshape(-1).clone()
    moments = all_reduced_moments(accelerator)
    mean, std = moments(flat[mine])
    flat[mine] = normalize_advantages(flat[mine], moments=moments)
    buffer.advantages = flat.reshape(buffer.n_steps, buffer.n_envs)

    scorer, reduces = None, [0]
    if world > 1:
        scorer = accelerator.prepare_model(ScoringModule(policy))

        def counting_allreduce(state, bucket):  # DDP's default hook, counted
            reduces[0] += 1
            tensor = bucket.buffer().div_(world)
            return (
                torch.distributed.all_reduce(tensor, async_op=True).get_future().then(lambda f: f.value()[0])
            )

        scorer.register_comm_hook(None, counting_allreduce)
    policy.loaded.model.train()
    finite, stats = accumulate_minibatch(policy, Minibatch(buffer, mine), cfg, accelerator.backward, scorer)
    params = {f"model.{n}": p for n, p in policy.loaded.model.named_parameters() if p.requires_grad}
    params.update({f"value_head.{n}": p for n, p in policy.value_head.named_parameters()})
    # Rank r's own numbers: rank 1 has finished no episode yet (None), rank 0 alone got a stop signal.
    reduced = reduce_metrics(accelerator, {
        "update": 3, "rollout/success_rate": 0.5 if rank == 0 else None, "rollout/reward_mean": float(rank),
        "rollout/episodes": 3 + rank, "time/rollout_s": 1.0 + rank, "time/env_steps_per_s": 10.0,
    })  # fmt: skip
    stop = agree_stop(accelerator, rank == 0)
    if rank == 0:
        grads = {name: param.grad.detach().clone() for name, param in params.items()}
        torch.save(
            {"grads": grads, "mean": float(mean), "std": float(std), "finite": finite,
             "micro_batches": len(stats["policy_loss"]), "reduces": reduces[0], "metrics": reduced, "stop": stop},
            out_path,
        )  # fmt: skip
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    run(*map(Path, sys.argv[1:4]))
