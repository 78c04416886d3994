"""Optional trackers: TensorBoard event files hold the same scalars as metrics.jsonl; W&B absent is a clear error."""

from __future__ import annotations

import importlib.util
import json

import pytest
from tests.helpers import run_cli

SMALL = [
    "env.n_envs=4",
    "ppo.n_steps=2",
    "ppo.total_env_steps=16",
    "ppo.minibatch_size=8",
    "ppo.micro_batch_size=4",
]


def test_ppo_with_tensorboard_writes_every_metric_of_every_update(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = run_cli("ppo", "--preset", "probe-constant-tiny", *SMALL, "tracking.tensorboard=true",
                  f"run.output_dir={tmp_path}", env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    run = tmp_path / "probe-constant-tiny/ppo"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for key in ("train/value_loss", "rollout/reward_mean", "train/lr"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(r["update"], pytest.approx(r[key])) for r in rows], key


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_wandb_without_the_package_is_a_clear_error_before_any_work(tmp_path):
    out = run_cli("ppo", "--preset", "probe-constant-tiny", *SMALL, "tracking.wandb=true",
                  f"run.output_dir={tmp_path}", env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert out.returncode == 1
    assert "tracking.wandb=true but the wandb package is not installed" in " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "probe-constant-tiny/ppo/checkpoints").exists()
