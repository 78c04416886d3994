"""PPO runs keep their files honest: damaged checkpoints are named and skipped, resumed logs hold each update
once, keep_last deletes only what no resume needs, and a bad init_from names its key."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
from tests.helpers import run_cli

from vlmppo.config import load_config
from vlmppo.errors import CheckpointError
from vlmppo.rl import train_ppo
from vlmppo.rl.ppo import SAMPLES_PER_LOG
from vlmppo.rl.startup import build_policy

SMALL = [
    "env.n_envs=2",
    "ppo.n_steps=4",
    "ppo.minibatch_size=4",
    "ppo.micro_batch_size=2",
    "ppo.n_epochs=1",
    "ppo.max_new_tokens=8",
]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A finished numberline-tiny PPO run of 2 updates with a checkpoint after each."""
    root = tmp_path_factory.mktemp("ppo-two")
    cfg = load_config(
        "numberline-tiny",
        overrides=[*SMALL, "ppo.save_every=1", "ppo.total_env_steps=16", f"run.output_dir={root}"],
    )
    train_ppo(cfg)
    return root


@pytest.fixture
def run_copy(two_checkpoints, tmp_path):
    shutil.copytree(two_checkpoints, tmp_path, symlinks=True, dirs_exist_ok=True)
    return tmp_path


def truncate(path, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


def test_resume_auto_skips_a_checkpoint_with_a_truncated_value_head_and_says_which_and_why(run_copy):
    head = run_copy / "numberline-tiny/ppo/checkpoints/000002/value_head.safetensors"
    truncate(head, 64)
    out = run_cli(
        "ppo", "--preset", "numberline-tiny", *SMALL, "ppo.save_every=1", "ppo.total_env_steps=24",
        f"run.output_dir={run_copy}", "--resume", "auto", env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "skipped" in out.stdout and str(head) in out.stdout and "bytes" in out.stdout
    assert "resuming from" in out.stdout and out.stdout.split("resuming from")[1].split()[0].endswith(
        "000001"
    )
    lines = (run_copy / "numberline-tiny/ppo/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["update"] for line in lines] == [1, 2, 3]


def test_a_damaged_checkpoint_given_to_eval_is_one_paragraph_naming_the_file(run_copy):
    weights = run_copy / "numberline-tiny/ppo/checkpoints/000002/adapter_model.safetensors"
    truncate(weights, weights.stat().st_size // 2)
    out = run_cli("eval", "--preset", "numberline-tiny", f"run.output_dir={run_copy}", "--ckpt", "last")
    assert out.returncode == 1
    assert str(weights) in out.stderr and "cannot be used" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 4


def test_samples_of_updates_after_the_checkpoint_are_not_repeated_on_resume(tmp_path):
    cfg = load_config(
        "numberline-tiny",
        overrides=[*SMALL, "ppo.save_every=2", "ppo.log_samples_every=1", "ppo.total_env_steps=32",
                   f"run.output_dir={tmp_path}"],
    )  # fmt: skip

    class Crash(Exception):
        pass

    def crash_after_3(update, total, metrics):  # after update 3's samples, before any checkpoint of it
        if update == 3:
            raise Crash

    with pytest.raises(Crash):
        train_ppo(cfg, on_update=crash_after_3)
    samples = tmp_path / "numberline-tiny/ppo/samples.jsonl"
    assert {json.loads(line)["update"] for line in samples.read_text().splitlines()} == {1, 2, 3}
    train_ppo(cfg, resume="auto")
    per_update = Counter(json.loads(line)["update"] for line in samples.read_text().splitlines())
    assert sorted(per_update) == [1, 2, 3, 4]
    assert set(per_update.values()) == {SAMPLES_PER_LOG}, per_update


def test_keep_last_leaves_the_newest_checkpoints_only(tmp_path):
    cfg = load_config(
        "numberline-tiny",
        overrides=[*SMALL, "ppo.save_every=1", "ppo.keep_last=2", "ppo.total_env_steps=24",
                   f"run.output_dir={tmp_path}"],
    )  # fmt: skip
    train_ppo(cfg)
    ckpts = tmp_path / "numberline-tiny/ppo/checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["000002", "000003", "last"]


def test_init_from_an_unknown_name_names_the_key_and_lists_null(tmp_path):
    cfg = load_config("numberline-tiny", overrides=[f"run.output_dir={tmp_path}", "ppo.init_from=base"])
    with pytest.raises(CheckpointError) as err:
        build_policy(cfg, "cpu")
    assert "(ppo.init_from=base)" in err.value.message
    assert "null" in err.value.hint and "sft" in err.value.hint
