"""`vlmppo sft` as a user runs it: the pipeline end to end, SIGTERM + resume, bad input, launch configs."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from tests.helpers import run_cli
from tests.sft.helpers import write_color_dataset

pytestmark = pytest.mark.e2e  # the sft CLI on tiny models: tens of seconds per test


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_pipeline_to_sft_on_numberline_learns_the_answer_format_and_reports_action_accuracy(tmp_path):
    common = ["--preset", "numberline-tiny", f"run.output_dir={tmp_path}"]
    for stage in ("collect", "label", "preprocess"):
        out = run_cli(stage, *common)
        assert out.returncode == 0, out.stderr
    out = run_cli(
        "sft", *common, "sft.eval_episodes=3"
    )  # the preset's 100 steps; greedy episodes at the evals
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # Rich wraps the summary off a terminal
    assert "100/100 optimizer steps" in text and "steps/s" in text
    assert re.search(r"greedy success \d+% of 3", text), text
    assert "greedy action accuracy" in text and "(unparseable 0.0%)" in text
    run = tmp_path / "numberline-tiny" / "sft"
    rows = lines(run / "metrics.jsonl")
    train_rows, final = rows[:-1], rows[-1]
    assert [r["step"] for r in train_rows] == list(range(1, 101))
    for key in (
        "sft/loss",
        "sft/grad_norm",
        "sft/lr",
        "time/samples_per_s",
        "data/truncated",
        "data/skipped",
    ):
        assert all(isinstance(r[key], (int, float)) for r in train_rows), key
    assert [r["step"] for r in train_rows if "eval/loss" in r] == [50, 100]
    played = [r for r in train_rows if "eval/success_rate" in r]
    assert [r["step"] for r in played] == [50, 100] and all(
        0.0 <= r["eval/success_rate"] <= 1.0 for r in played
    )
    assert train_rows[-1]["sft/loss"] < train_rows[0]["sft/loss"] / 3
    assert final["final"] and final["eval/unparseable_rate"] == 0.0 and final["eval/action_samples"] > 0
    assert 0.0 <= final["eval/action_acc"] <= 1.0
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["000050", "000100", "final", "last"]
    assert (checkpoints / "last").resolve().name == "000100"
    assert (checkpoints / "000050" / "trainer_state.pt").is_file()
    meta = json.loads((checkpoints / "final" / "vlmppo.json").read_text())
    assert meta["stage"] == "sft" and meta["family"] == "qwen2-vl" and meta["final_metrics"] == final
    assert (checkpoints / "final" / "adapter_model.safetensors").is_file()
    assert (checkpoints / "final" / "config.yaml").is_file()
    # A second fresh run would mix its checkpoints with these: refused, with the way out named.
    again = run_cli("sft", *common)
    assert again.returncode == 1 and "--resume auto" in again.stderr and "Traceback" not in again.stderr


def test_sigterm_saves_a_checkpoint_and_exits_0_then_resume_auto_finishes(tmp_path):
    train, val = write_color_dataset(tmp_path)
    args = ["--preset", "probe-color-tiny", f"run.output_dir={tmp_path}", f"sft.train_file={train}",
            f"sft.val_file={val}", "sft.batch_size=2", "sft.save_every=100000", "sft.eval_every=100000"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "vlmppo", "sft", *args, "sft.max_steps=100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    metrics = tmp_path / "probe-color-tiny" / "sft" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped on SIGTERM" in " ".join(stdout.split())
    checkpoints = tmp_path / "probe-color-tiny" / "sft" / "checkpoints"
    last = (checkpoints / "last").resolve()
    step = int(last.name)
    assert step >= 3 and (last / "trainer_state.pt").is_file() and not (checkpoints / "final").exists()
    assert lines(metrics)[-1]["step"] == step  # the checkpoint is of the last step that ran
    out = run_cli("sft", *args, f"sft.max_steps={step + 2}", "--resume", "auto")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert f"resumed from {last}" in text and "sft.max_steps: 100000" in text
    assert f"{step + 2}/{step + 2} optimizer steps" in text
    assert [r["step"] for r in lines(metrics)][-3:] == [step + 1, step + 2, step + 2]
    assert (checkpoints / "final" / "adapter_model.safetensors").is_file()


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def good_rows(tmp_path):
    train, _ = write_color_dataset(tmp_path)
    return [json.loads(x) for x in train.read_text().splitlines()]


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_assistant", "line 2: no assistant turn"),
        ("missing_image", "does not exist"),
        ("broken_image", "does not decode"),
        ("empty", "is empty"),
        ("no_file", "does not exist"),
    ],
)
def test_bad_dataset_gets_a_clear_error_naming_the_file_and_writes_no_checkpoint(
    tmp_path, good_rows, case, message
):
    data = tmp_path / "data"
    bad = data / "bad.jsonl"
    rows = [dict(r) for r in good_rows[:3]]
    if case == "no_assistant":
        rows[1]["messages"] = rows[1]["messages"][:1]
    elif case == "missing_image":
        rows[2]["images"] = ["../frames/nope.png"]
    elif case == "broken_image":
        (tmp_path / "frames" / "broken.png").write_bytes(b"not a png")
        rows[0]["images"] = ["../frames/broken.png"]
    elif case == "empty":
        rows = []
    if case != "no_file":
        write_rows(bad, rows)
    out = run_cli(
        "sft", "--preset", "probe-color-tiny", f"run.output_dir={tmp_path}", f"sft.train_file={bad}"
    )
    assert out.returncode == 1
    err = " ".join(out.stderr.split())
    assert message in err and str(bad) in err
    assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "probe-color-tiny" / "sft").exists()


def test_resume_from_a_checkpoint_of_another_family_is_refused(tmp_path):
    from tests.sft.helpers import sft_config

    from vlmppo.sft import train_sft

    train, val = write_color_dataset(tmp_path)
    qwen = train_sft(sft_config(tmp_path, train, val, "sft.max_steps=1")).checkpoint
    out = run_cli("sft", "--preset", "numberline-llava-tiny", f"run.output_dir={tmp_path}",
                  f"sft.train_file={train}", "--resume", str(qwen))  # fmt: skip
    assert out.returncode == 1
    err = " ".join(out.stderr.split())
    assert f"Checkpoint {qwen} was trained from a qwen2-vl model, but model.family is 'llava-next'" in err
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "numberline-llava-tiny" / "sft").exists()


def test_launch_configs_ship_with_the_package_and_give_an_accelerate_command(tmp_path):
    from vlmppo.config import load_config
    from vlmppo.sft.launching import LAUNCHES, launch_command, launch_config_path

    assert launch_config_path("single") is None
    stages = {"ddp": None, "zero2": 2, "zero3": 3, "zero3-offload": 3}
    for name in LAUNCHES[1:]:
        path = launch_config_path(name)
        spec = yaml.safe_load(path.read_text())
        assert spec["distributed_type"] == ("MULTI_GPU" if name == "ddp" else "DEEPSPEED")
        assert spec.get("deepspeed_config", {}).get("zero_stage") == stages[name]
        assert "scheduler" not in json.dumps(spec)  # our LR curve, never DeepSpeed's
    offload = yaml.safe_load(launch_config_path("zero3-offload").read_text())["deepspeed_config"]
    assert offload["offload_optimizer_device"] == "cpu" and offload["offload_param_device"] == "cpu"
    cfg = load_config("numberline-qwen", overrides=["sft.launch=zero3"])
    argv = launch_command(cfg, 8, config_file="runs/x/config.yaml", extra=["--resume", "auto"])
    assert argv == ["accelerate", "launch", "--config_file", str(launch_config_path("zero3")),
                    "--num_processes", "8", "-m", "vlmppo", "sft", "--config", "runs/x/config.yaml",
                    "--resume", "auto"]  # fmt: skip


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
def test_a_deepspeed_launch_without_deepspeed_is_a_clear_error(tmp_path):
    train, val = write_color_dataset(tmp_path)
    out = run_cli("sft", "--preset", "probe-color-tiny", f"run.output_dir={tmp_path}", f"sft.train_file={train}",
                  "sft.launch=zero2")  # fmt: skip
    assert out.returncode == 1
    err = " ".join(out.stderr.split())
    assert "sft.launch=zero2 uses DeepSpeed, which is not installed" in err and "Traceback" not in err


def test_two_processes_under_ddp_train_like_one_process_with_the_whole_batch(tmp_path):
    # Two CPU processes (gloo) with 2 samples each must make the steps of one process with 4: the same
    # samples per step (rank r takes every 2nd of the global micro-batch) and the loss averaged over all
    # answer tokens of both ranks. Only rank 0 writes metrics, checkpoints and the summary.
    from safetensors.torch import load_file
    from tests.sft.helpers import sft_config

    from vlmppo.sft import train_sft

    train, val = write_color_dataset(tmp_path, n_train=16, n_val=5)
    steps = ["sft.max_steps=3", "sft.eval_every=3"]
    one = train_sft(sft_config(tmp_path, train, val, *steps, "sft.batch_size=4", "run.name=one"))
    cli = ["--preset", "probe-color-tiny", f"run.output_dir={tmp_path / 'runs'}", f"sft.train_file={train}",
           f"sft.val_file={val}", "sft.warmup_ratio=0", "sft.lr=1e-2", "sft.save_every=1000", *steps,
           "sft.batch_size=2", "sft.launch=ddp", "run.name=two"]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "vlmppo", "sft", *cli],
        capture_output=True, text=True, timeout=300, env={**os.environ, "ACCELERATE_USE_CPU": "1", "COLUMNS": "200"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("done:") == 1
    two = tmp_path / "runs" / "two" / "sft"
    rows_one = lines(tmp_path / "runs" / "one" / "sft" / "metrics.jsonl")
    rows_two = lines(two / "metrics.jsonl")
    assert [r["samples"] for r in rows_two[:-1]] == [r["samples"] for r in rows_one[:-1]] == [4, 8, 12]
    for a, b in zip(rows_one, rows_two, strict=True):
        for key in (
            "sft/loss",
            "sft/grad_norm",
            "sft/tokens",
            "eval/loss",
            "eval/token_acc",
            "eval/action_samples",
        ):
            assert (a.get(key) is None) == (b.get(key) is None), key
            if a.get(key) is not None:
                assert b[key] == pytest.approx(a[key], rel=1e-5), key
    wa = load_file(str(one.final / "adapter_model.safetensors"))
    wb = load_file(str(two / "checkpoints" / "final" / "adapter_model.safetensors"))
    for k in wa:
        assert (wa[k] - wb[k]).abs().max() < 1e-4, k


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    """One SFT step on the tiny Qwen2-VL with LoRA: a checkpoint to resume in the cases below."""
    from tests.sft.helpers import sft_config

    from vlmppo.sft import train_sft

    tmp = tmp_path_factory.mktemp("resume-cases")
    train, val = write_color_dataset(tmp)
    return tmp, train, train_sft(sft_config(tmp, train, val, "sft.max_steps=1")).checkpoint


def _copy_of_the_tiny_model(tmp, name, edit=None):
    import shutil

    from vlmppo.models.tiny import tiny_model_path

    folder = tmp / name
    shutil.copytree(tiny_model_path("qwen2-vl"), folder)
    if edit:
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "case, overrides, message",
    [
        ("another model", ["model.path={other}"], "but model.path is {other}, another model"),
        ("another LoRA rank", ["model.lora.r=4"], "does not fit model.lora"),
        ("full fine-tuning", ["model.lora=null"], "holds a LoRA adapter, but model.lora is null"),
    ],
)
def test_resume_into_another_model_or_lora_layout_is_refused(qwen_checkpoint, case, overrides, message):
    tmp, train, ckpt = qwen_checkpoint
    other = _copy_of_the_tiny_model(
        tmp, case.replace(" ", "-"), lambda c: c["text_config"].update(rms_norm_eps=1e-3)
    )
    out = run_cli("sft", "--preset", "probe-color-tiny", f"run.output_dir={tmp / case}", f"sft.train_file={train}",
                  *[o.format(other=other) for o in overrides], "--resume", str(ckpt))  # fmt: skip
    assert out.returncode == 1
    err = " ".join(out.stderr.split())
    assert message.format(other=other) in err and str(ckpt) in err
    assert "Traceback" not in out.stderr


def test_resume_onto_a_moved_copy_of_the_same_model_continues_there(qwen_checkpoint):
    tmp, train, ckpt = qwen_checkpoint
    moved = _copy_of_the_tiny_model(tmp, "moved")
    out = run_cli("sft", "--preset", "probe-color-tiny", f"run.output_dir={tmp / 'moved-run'}",
                  f"sft.train_file={train}", "sft.max_steps=2", f"model.path={moved}", "--resume", str(ckpt))  # fmt: skip
    assert out.returncode == 0, out.stderr
    meta = json.loads((tmp / "moved-run/probe-color-tiny/sft/checkpoints/last/vlmppo.json").read_text())
    assert meta["base_model"] == str(moved) and meta["step"] == 2
