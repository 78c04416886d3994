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


@pytest.mark.e2e
def test_ppo_tensorboard_plots_against_env_steps_with_samples_and_the_config_as_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = run_cli("ppo", "--preset", "probe-constant-tiny", *SMALL, "tracking.tensorboard=true",
                  f"run.output_dir={tmp_path}", env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    run = tmp_path / "probe-constant-tiny/ppo"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    # The x axis is env steps (RL's convention), not the update counter.
    assert [r["env_steps"] for r in rows] == [8, 16]
    for key in ("train/value_loss", "rollout/reward_mean", "train/lr", "update"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(r["env_steps"], pytest.approx(r[key])) for r in rows], key
    # The sample answers, as the text table of the updates that wrote samples.jsonl.
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    texts = events.Tensors("samples/text_summary")
    assert [t.step for t in texts] == [8]
    table = texts[0].tensor_proto.string_val[0].decode()
    assert table.startswith("| update | t | env | text |") and len(table.splitlines()) == 2 + len(samples)
    # The resolved config, as hyper-parameters.
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert (
        hparams["ppo.total_env_steps"].number_value == 16
        and hparams["run.name"].string_value == "probe-constant-tiny"
    )
    assert hparams["eval.seeds"].string_value == "[1000]"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_wandb_without_the_package_is_a_clear_error_before_any_work(tmp_path):
    out = run_cli("ppo", "--preset", "probe-constant-tiny", *SMALL, "tracking.wandb=true",
                  f"run.output_dir={tmp_path}", env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert out.returncode == 1
    assert "tracking.wandb=true but the wandb package is not installed" in " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "probe-constant-tiny/ppo/checkpoints").exists()


NETRC_KEY = "a" * 40


def test_wandb_mode_follows_wandb_mode_then_credentials(tmp_path):
    from vlmppo.tracking import wandb_mode

    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {NETRC_KEY}\n")
    netrc.chmod(0o600)
    nobody = {"HOME": str(tmp_path / "empty-home")}
    assert wandb_mode(nobody) == "offline"  # no credentials: offline, `wandb sync` later
    assert wandb_mode({**nobody, "WANDB_API_KEY": "k"}) == "online"
    assert wandb_mode({**nobody, "NETRC": str(netrc)}) == "online"  # a `wandb login` user
    assert wandb_mode({**nobody, "NETRC": str(netrc), "WANDB_MODE": "disabled"}) == "disabled"
    assert wandb_mode({**nobody, "WANDB_API_KEY": "k", "WANDB_MODE": "offline"}) == "offline"
    assert wandb_mode({**nobody, "WANDB_DISABLED": "true"}) == "disabled"
    # The login is per host: a netrc for api.wandb.ai does not log in to a private server.
    assert (
        wandb_mode({**nobody, "NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.org"})
        == "offline"
    )
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text(f"machine wandb.example.org login user password {NETRC_KEY}\n")
    assert wandb_mode({"HOME": str(home), "WANDB_BASE_URL": "https://wandb.example.org"}) == "online"


@pytest.mark.e2e
def test_a_tracker_resumed_from_a_checkpoint_continues_its_wandb_run_with_the_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from vlmppo.config.schema import TrackingConfig
    from vlmppo.tracking import Tracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracking = TrackingConfig(wandb=True)
    config = {"ppo": {"lr": 3e-5, "n_steps": 4}, "run": {"name": "r"}}
    with Tracker(
        tmp_path, tracking, step_key="update", x_key="env_steps", run_name="r", config=config
    ) as first:
        first.log({"update": 1, "env_steps": 8, "train/value_loss": 0.5})
        meta = first.checkpoint_meta()
        assert first._wandb.config["ppo"] == {"lr": 3e-5, "n_steps": 4}
    checkpoint = tmp_path / "checkpoints/000001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "vlmppo.json").write_text(json.dumps(meta))
    with Tracker(tmp_path, tracking, step_key="update", x_key="env_steps", run_name="r", config=config,
                 resume_step=1, resume_from=checkpoint) as second:  # fmt: skip
        assert second.wandb_run_id == meta["wandb_run_id"]
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {name.rsplit("-", 1)[1] for name in runs} == {meta["wandb_run_id"]}


@pytest.mark.e2e
def test_wandb_mode_disabled_writes_nothing(tmp_path):
    pytest.importorskip("wandb")
    home = tmp_path / "home"
    home.mkdir()
    out = run_cli("ppo", "--preset", "probe-constant-tiny", *SMALL, "ppo.total_env_steps=8", "tracking.wandb=true",
                  f"run.output_dir={tmp_path}", env={"WANDB_MODE": "disabled", "HOME": str(home)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert not list(tmp_path.rglob("*wandb*")) and not any(home.iterdir())
