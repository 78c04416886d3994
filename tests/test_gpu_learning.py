"""bench/gpu_learning.sh (the learning protocol on a GPU, docs/learning.md): its commands resolve for every task,
its report is written from what the runs leave, and DRY=1 runs the whole protocol on a CPU."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from bench.learning import DRY_OVERRIDES, TASKS
from bench.learning_report import write_report
from tests.helpers import REPO

from vlmppo.config import load_config


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_resolves_on_the_gpu_and_in_the_dry_run(task):
    gpu = load_config(TASKS[task], overrides=["run.output_dir=/tmp/runs", "sft.max_steps=100"])
    dry = load_config(TASKS[task], overrides=DRY_OVERRIDES)
    assert gpu.model.path == "small:qwen2-vl" and dry.model.path == "tiny:qwen2-vl"
    assert dry.run.device == "cpu" and dry.ppo.total_env_steps <= 16 and dry.env.id == gpu.env.id


def test_report_has_a_row_per_policy_a_stage_table_and_curves(tmp_path):
    sft_rows = [{"step": s, "samples": 64 * s, "sft/loss": 2.0 / s} for s in range(1, 5)]
    report = {
        "task": "numberline", "preset": "numberline-small", "dry": False, "seed": 0, "budget_s": 510, "gpu": "H200",
        "wall_s": 500.0, "data": {"train_samples": 100},
        "stages": [{"stage": "weak sft", "command": "vlmppo sft --preset numberline-small", "rc": 0, "wall_s": 30.0,
                    "time_boxed": False}],
        "results": {"expert": {"success_rate": 1.0, "success_ci95": [0.98, 1.0], "episodes": 200},
                    "random": {"success_rate": 0.25, "success_ci95": [0.2, 0.31], "episodes": 200}},
        "sft": {"weak": {"steps": 4, "samples_per_s": 900.0}},
        "sft_curves": {"weak": sft_rows, "strong": sft_rows},
        "ppo": [{"update": 0, "env_steps": 0, "eval/success_rate": 0.565, "eval/return_mean": 0.1, "eval/episodes": 50},
                *({"update": u, "env_steps": 512 * u, "rollout/success_rate": 0.1 * u} for u in range(1, 4))],
    }  # fmt: skip
    report["ppo"][2].update({"eval/success_rate": 0.4, "eval/invalid_action_rate": 0.02, "eval/episodes": 50})
    write_report(report, tmp_path / "learning-numberline")
    md = (tmp_path / "learning-numberline.md").read_text()
    assert "| expert | 100.0 | [98.0, 100.0] |" in md and "| random | 25.0 |" in md
    assert "| strong sft | not run |" in md and "| weak sft | 30.0 | 0 |" in md and "900 samples/s" in md
    assert "| 0 | 0 | 56.5 | 0.10 | - | 50 | - |" in md and "| 2 | 1024 | 40.0 | - | 2.0 | 50 | 20.0 |" in md
    saved = json.loads((tmp_path / "learning-numberline.json").read_text())
    assert saved["ppo"][-1]["update"] == 3 and "sft_curves" not in saved
    assert (tmp_path / "learning-numberline.png").stat().st_size > 10_000


@pytest.mark.slow
def test_dry_run_plays_the_whole_protocol_on_the_cpu(tmp_path):
    env = dict(os.environ, DRY="1", TASK="numberline", OUT=str(tmp_path / "out"), RUNS=str(tmp_path / "runs"))
    done = subprocess.run(["bash", "bench/gpu_learning.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "learning-numberline.json").read_text())
    assert [s["rc"] for s in report["stages"]] == [0] * 9, report["stages"]
    assert set(report["results"]) == {"expert", "random", "weak sft", "strong sft", "weak + ppo"}
    assert report["results"]["expert"]["success_rate"] == 1.0 and report["ppo"]
    assert {p.suffix for p in (tmp_path / "out").iterdir()} == {".md", ".json", ".png", ".log"}


def test_the_curve_protocol_starts_rl_from_the_best_checkpoint_under_the_ceiling():
    from bench.learning_curve import pick_weak_start, samples_by_step

    curve = [{"step": 100, "success_rate": 0.45}, {"step": 200, "success_rate": 0.58},
             {"step": 300, "success_rate": 0.58}, {"step": 400, "success_rate": 0.81},
             {"step": 500, "success_rate": None}]  # fmt: skip
    assert pick_weak_start(curve, 0.6)["step"] == 300  # the tie goes to the later one
    assert pick_weak_start(curve, 0.5)["step"] == 100
    assert pick_weak_start(curve, 0.4) is None
    rows = [{"step": 10, "samples": 640}, {"step": 20, "samples": 1280}, {"final": True, "eval/loss": 1.0}]
    assert samples_by_step(rows, 20) == 1280 and samples_by_step(rows, 25) == 1280
    assert samples_by_step(rows, 15) == 640 and samples_by_step(rows, 5) is None


@pytest.mark.slow
def test_dry_curve_protocol_in_two_phases_shares_its_runs_folder(tmp_path):
    base = dict(os.environ, DRY="1", TASK="numberline", PROTOCOL="curve", OUT=str(tmp_path / "out"),
                RUNS_CURVE=str(tmp_path / "runs"))  # fmt: skip
    for phase in ("sft", "rl"):
        done = subprocess.run(["bash", "bench/gpu_learning.sh"], cwd=REPO, env=dict(base, PHASE=phase),
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sft = json.loads((tmp_path / "out" / "learning-numberline-sft.json").read_text())
    rl = json.loads((tmp_path / "out" / "learning-numberline-rl.json").read_text())
    assert [p["step"] for p in sft["curve"]] == [2, 4] and all(s["rc"] == 0 for s in sft["stages"])
    # DRY's tiny model reads nothing (0% success): the weak start is the later checkpoint, and PPO ran from it.
    assert rl["weak_start"]["step"] == 4 and rl["weak_start"]["checkpoint"].endswith("000004")
    assert [s["stage"] for s in rl["stages"]] == ["weak + ppo", "eval weak + ppo"] and rl["ppo"]
    assert all(s["rc"] == 0 for s in rl["stages"]) and "weak + ppo" in rl["results"]


@pytest.mark.slow
def test_dry_curve_in_run_uses_the_sft_runs_own_evals_and_evaluates_only_the_stop_step(tmp_path):
    env = dict(os.environ, DRY="1", TASK="numberline", PROTOCOL="curve", PHASE="sft", OUT=str(tmp_path / "out"),
               RUNS_CURVE=str(tmp_path / "runs"), CURVE_IN_RUN="1", SFT_STEPS="6", CURVE_POINTS="3",
               SFT_STOP_STEP="5")  # fmt: skip
    done = subprocess.run(["bash", "bench/gpu_learning.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sft = json.loads((tmp_path / "out" / "learning-numberline-sft.json").read_text())
    assert "sft.eval_episodes=2" in next(s["command"] for s in sft["stages"] if s["stage"] == "long sft")
    assert [p["step"] for p in sft["curve"]] == [2, 4, 5]
    assert [p.get("in_run", False) for p in sft["curve"]] == [True, True, False]
    evals = [s["stage"] for s in sft["stages"] if s["stage"].startswith("eval sft")]
    assert evals == ["eval sft step 5"]  # the stop step has no in-run eval: one eval process, for it alone
    for p in sft["curve"][:2]:
        assert p["episodes"] == 2 and 0.0 <= p["success_rate"] <= 1.0 and len(p["success_ci95"]) == 2
        assert sft["results"][f"sft step {p['step']}"]["success_rate"] == p["success_rate"]


def test_an_rl_variant_has_its_own_run_and_overrides_only_its_ppo_gets(monkeypatch, tmp_path):
    from bench.learning_curve import CurveProtocol

    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setenv("PHASE", "rl")
    monkeypatch.setenv("RL_TAG", "gigpo")
    monkeypatch.setenv("RL_EXTRA", "ppo.advantage=gigpo ppo.group_size=8")
    tagged = CurveProtocol()
    assert tagged.rl_name == "numberline-small-s0-rl-gigpo"
    assert tagged.report_stem == tmp_path / "learning-numberline-rl-gigpo"
    assert tagged.rl_extra == ["ppo.advantage=gigpo", "ppo.group_size=8"]
    assert not set(tagged.rl_extra) & set(tagged.common)  # the SFT and the evals do not get them
    monkeypatch.delenv("RL_TAG")
    monkeypatch.delenv("RL_EXTRA")
    plain = CurveProtocol()
    assert plain.rl_name == "numberline-small-s0-rl" and plain.rl_extra == []


@pytest.mark.slow
def test_dry_sweep_runs_two_variants_from_one_weak_start(tmp_path):
    env = dict(os.environ, DRY="1", TASK="numberline", OUT=str(tmp_path / "out"), RUNS=str(tmp_path / "runs"),
               EVAL_CURVE="0", VARIANTS="a=ppo.lr=3e-5;b=ppo.advantage=grpo ppo.group_size=2",
               WEAK_CKPT=str(tmp_path / "runs" / "numberline-small-s0" / "sft" / "checkpoints" / "000004"))  # fmt: skip
    done = subprocess.run(["bash", "bench/gpu_learning_sweep.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sft = json.loads((tmp_path / "out" / "learning-numberline-sft.json").read_text())
    assert sft["curve"] == [] and not any(s["stage"].startswith("eval sft") for s in sft["stages"])
    for tag, override in (("a", "ppo.lr=3e-5"), ("b", "ppo.advantage=grpo")):
        rl = json.loads((tmp_path / "out" / f"learning-numberline-rl-{tag}.json").read_text())
        ppo = next(s for s in rl["stages"] if s["stage"] == "weak + ppo")
        assert ppo["rc"] == 0 and override in ppo["command"] and "000004" in ppo["command"]
        assert f"run.name=numberline-small-s0-rl-{tag}" in ppo["command"] and rl["ppo"]


@pytest.mark.slow
def test_dry_tasks_run_at_once_each_with_its_own_knobs(tmp_path):
    env = dict(os.environ, DRY="1", PHASE="sft", EVAL_CURVE="0", OUT=str(tmp_path / "out"),
               RUNS=str(tmp_path / "runs"), TASKS="numberline:SFT_STEPS=3;minigrid-empty:SFT_STEPS=5 SEED=1")  # fmt: skip
    done = subprocess.run(["bash", "bench/gpu_learning_tasks.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for task, steps, seed in (("numberline", 3, 0), ("minigrid-empty", 5, 1)):
        report = json.loads((tmp_path / "out" / f"learning-{task}-sft.json").read_text())
        sft = next(s for s in report["stages"] if s["stage"] == "long sft")
        assert sft["rc"] == 0 and f"sft.max_steps={steps}" in sft["command"] and report["seed"] == seed
        assert (tmp_path / "out" / f"tasks-{task}.txt").is_file()
        assert report["sft"]["strong"]["steps"] == steps
