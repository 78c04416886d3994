"""`vlmppo pipeline`: every stage end to end on numberline-tiny, then a second call skips every stage."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from tests.helpers import run_cli

from vlmppo.config.schema import Config

pytestmark = pytest.mark.e2e  # every stage of the pipeline, in subprocesses


def outputs(run):
    """Modification times of the run's files, but for config.yaml and the lock files every command rewrites."""
    return {
        p: p.stat().st_mtime_ns
        for p in run.rglob("*")
        if p.is_file() and p.name != "config.yaml" and ".locks" not in p.parts
    }


STAGES = ("collect", "label", "preprocess", "sft", "ppo", "eval")
# numberline-tiny, shortened so that all six stages run in CI in well under a minute.
SMALL = [
    "collect.episodes=8",
    "sft.max_steps=4",
    "sft.eval_every=4",
    "sft.save_every=4",
    "ppo.total_env_steps=32",
    "ppo.max_new_tokens=8",
    "ppo.n_epochs=1",
    "eval.episodes=4",
    "eval.max_new_tokens=8",
    "eval.trajectories=1",
]


def pipeline(out, *args, env=None):
    return run_cli(
        "pipeline",
        "--preset",
        "numberline-tiny",
        f"run.output_dir={out}",
        "run.name=run",
        *SMALL,
        *args,
        env=env,
    )


def statuses(stdout: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for stage, message in re.findall(r"\[\d/\d\] (\w+): (.*)", stdout):
        found.setdefault(stage, []).append(message)
    return found


def test_pipeline_runs_every_stage_then_a_second_call_skips_them_all(tmp_path):
    first = pipeline(tmp_path, env={"COLUMNS": "40"})  # piped, narrow: every line must still be whole
    assert first.returncode == 0, first.stdout + first.stderr
    status = statuses(first.stdout)
    assert list(status) == list(STAGES)
    assert all(messages == ["running", messages[-1]] for messages in status.values()), status  # a fresh run
    assert all(messages[-1].startswith("done in") for messages in status.values()), status
    # Each stage's own status line stays, the wait for the model is named, and no library bar shows.
    assert re.search(r"^sft: (\d+)/\1 · loss [\d.]+ · lr", first.stdout, re.M), first.stdout
    assert re.search(r"^ppo: (\d+)/\1 · steps \d+ · success", first.stdout, re.M), first.stdout
    wait = r"(loading tiny:qwen2-vl|building the tiny qwen2-vl model \(first use only\), then loading it)"
    assert re.search(rf"^sft: {wait}$", first.stdout, re.M), first.stdout
    assert "Loading weights" not in first.stderr and "Writing model shards" not in first.stderr
    # The closing summary: what each stage did, the agent's success beside the baselines, the HTML report.
    for stage in STAGES:
        assert re.search(rf"│ {stage} +│ ran +│ [\d.]+ s +│", first.stdout), stage
    assert re.search(r"│ ppo-000001 \(agent\) +│ 4 +│ [\d.]+% +│ [\d.]+% - [\d.]+% +│", first.stdout)
    assert re.search(r"│ expert +│ 4 +│ 100.0% +│", first.stdout)
    run = tmp_path / "run"
    report = run / "eval/ppo-000001/report.html"
    assert f"  report: {report}\n" in first.stdout
    assert report.is_file() and (run / "eval/ppo-000001/curves-ppo.png").is_file()
    assert (run / "eval/ppo-000001/curves-sft.png").is_file()
    # The eval stage played the baselines first, and the report places the agent between them.
    expert, random = (json.loads((run / f"eval/{p}/metrics.json").read_text()) for p in ("expert", "random"))
    assert expert["success_rate"] == 1.0 and expert["episodes"] == random["episodes"] == 4
    text = report.with_name("report.md").read_text()
    assert "| expert (baseline) | 4 | 100.0% |" in text
    assert f"| random (baseline) | 4 | {100 * random['success_rate']:.1f}% |" in text
    # PPO started from this run's SFT checkpoint, whose hash is recorded as PPO's input.
    record = json.loads((run / "pipeline.json").read_text())
    assert set(record["stages"]) == set(STAGES)
    assert record["stages"]["ppo"]["config"]["ppo"]["init_from"] == "sft"
    assert "sft/checkpoints/000004/adapter_model.safetensors" in record["stages"]["ppo"]["inputs"]
    before = outputs(run)

    second = pipeline(tmp_path)
    assert second.returncode == 0, second.stderr
    status = statuses(second.stdout)
    assert list(status) == list(STAGES)
    assert all(messages == ["skipped: up to date"] for messages in status.values()), status
    assert all(re.search(rf"│ {stage} +│ skipped: up to date +│ - +│", second.stdout) for stage in STAGES)
    after = outputs(run)
    assert after == before  # nothing was rewritten

    # A changed eval setting re-runs eval only.
    third = pipeline(tmp_path, "eval.episodes=5")
    assert third.returncode == 0, third.stderr
    status = statuses(third.stdout)
    assert [s for s, m in status.items() if m[0].startswith("running")] == ["eval"]
    assert re.fullmatch(r"running: its config changed, eval\.episodes: \d+ -> 5", status["eval"][0]), status
    assert json.loads((run / "eval/ppo-000001/metrics.json").read_text())["episodes"] == 5
    # The baselines were played on the same task, so they were kept.
    assert (run / "eval/expert/metrics.json").stat().st_mtime_ns == before[run / "eval/expert/metrics.json"]


def test_a_data_stage_run_by_hand_is_not_repeated_and_a_changed_one_is_moved_aside(tmp_path):
    common = [
        "--preset",
        "numberline-tiny",
        f"run.output_dir={tmp_path}",
        "run.name=run",
        "collect.episodes=4",
    ]
    assert run_cli("collect", *common).returncode == 0
    out = run_cli("pipeline", *common, "--to", "label")
    assert out.returncode == 0, out.stderr
    status = statuses(out.stdout)
    assert status["collect"] == ["skipped: up to date (its manifest matches)"]
    assert status["label"][-1].startswith("done in")

    out = run_cli("pipeline", *common[:-1], "collect.episodes=5", "--to", "label")
    assert out.returncode == 0, out.stderr
    status = statuses(out.stdout)
    assert status["collect"][0].startswith(
        "running: its config changed, collect.episodes: 4 -> 5; the old output was moved to"
    )
    assert status["label"][0].startswith("running: its inputs changed")
    episodes = {
        json.loads(x)["episode"] for x in (tmp_path / "run/collect/episodes.jsonl").read_text().splitlines()
    }
    assert episodes == set(range(5))
    moved = [p for p in (tmp_path / "run").iterdir() if p.name.startswith("collect.old-")]
    assert len(moved) == 1 and (moved[0] / "episodes.jsonl").is_file()


def test_a_stage_range_in_the_wrong_order_is_a_clear_error(tmp_path):
    out = run_cli(
        "pipeline",
        "--preset",
        "numberline-tiny",
        f"run.output_dir={tmp_path}",
        "--from",
        "eval",
        "--to",
        "sft",
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "--from eval comes after --to sft" in " ".join(out.stderr.split())
    out = run_cli("pipeline", "--preset", "numberline-tiny", f"run.output_dir={tmp_path}", "--from", "train")
    assert out.returncode == 1 and "is not a stage" in out.stderr
    assert not (tmp_path / "numberline-tiny").exists()


def test_a_stage_stopped_by_sigterm_is_resumed_by_the_next_call(tmp_path):
    args = ["pipeline", "--preset", "probe-color-tiny", f"run.output_dir={tmp_path}", "run.name=run", "--to", "sft",
            "collect.episodes=8", "sft.max_steps=60", "sft.batch_size=2", "sft.eval_every=1000", "sft.save_every=1000"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "vlmppo", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    metrics = tmp_path / "run/sft/metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert statuses(stdout)["sft"][-1].startswith("stopped without a complete output")
    stopped_at = int((tmp_path / "run/sft/checkpoints/last").resolve().name)
    assert stopped_at < 60

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    status = statuses(again.stdout)
    assert all(status[s] == ["skipped: up to date"] for s in ("collect", "label", "preprocess")), status
    assert status["sft"][0] == "running: resuming the interrupted run" and status["sft"][-1].startswith(
        "done in"
    )
    steps = [json.loads(x).get("step") for x in metrics.read_text().splitlines()]
    assert steps[stopped_at] == stopped_at + 1 and (tmp_path / "run/sft/checkpoints/final").is_dir()
    assert not [p for p in (tmp_path / "run").iterdir() if ".old-" in p.name]  # nothing was moved aside


def test_sft_stopped_at_a_step_is_continued_by_a_call_without_it(tmp_path):
    # sft.stop_at_step says where this call stops, not what the finished stage makes: dropping it continues the
    # stage from its checkpoint (nothing moved aside, the step counter unbroken) instead of starting it over.
    args = ["pipeline", "--preset", "probe-color-tiny", f"run.output_dir={tmp_path}", "run.name=run", "--to", "sft",
            "collect.episodes=8", "sft.max_steps=6", "sft.batch_size=2", "sft.eval_every=1000", "sft.save_every=1000"]  # fmt: skip
    first = run_cli(*args, "sft.stop_at_step=4", env={"COLUMNS": "200"})
    assert first.returncode == 0, first.stderr
    assert statuses(first.stdout)["sft"][-1].endswith(
        "(sft.stop_at_step=4, after step 4); run the pipeline again without it to continue"
    )
    assert (tmp_path / "run/sft/checkpoints/last").resolve().name == "000004"
    assert not (tmp_path / "run/sft/checkpoints/final").exists()

    again = run_cli(*args, env={"COLUMNS": "200"})
    assert again.returncode == 0, again.stderr
    status = statuses(again.stdout)
    assert status["sft"][0] == "running: resuming the interrupted run" and status["sft"][-1].startswith(
        "done in"
    )
    rows = [json.loads(x) for x in (tmp_path / "run/sft/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if not r.get("final")] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "run/sft/checkpoints/final").is_dir()
    assert not [p for p in (tmp_path / "run").iterdir() if ".old-" in p.name]


def test_the_dry_run_plans_ppo_from_this_runs_sft_checkpoint_and_runs_nothing(tmp_path):
    out = run_cli("pipeline", "--preset", "numberline-tiny", f"run.output_dir={tmp_path}", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert re.search(r"starts from\s+│\s+sft\s", out.stdout) and "plan: vlmppo eval" in out.stdout
    assert not (tmp_path / "numberline-tiny").exists()


def test_a_hand_run_stage_with_an_unreadable_manifest_is_run_again(tmp_path):
    common = [
        "--preset",
        "numberline-tiny",
        f"run.output_dir={tmp_path}",
        "run.name=run",
        "collect.episodes=2",
    ]
    assert run_cli("collect", *common).returncode == 0
    (tmp_path / "run/collect/manifest.json").write_text("{torn")
    out = run_cli("pipeline", *common, "--to", "collect")
    assert out.returncode == 0, out.stderr
    assert statuses(out.stdout)["collect"][0].startswith("running: its manifest.json cannot be read")
    assert json.loads((tmp_path / "run/collect/manifest.json").read_text())["stage"] == "collect"


def test_a_record_from_before_a_new_setting_keeps_its_stage_until_the_setting_is_used(tmp_path):
    # A pipeline.json written by an older vlmppo lacks the settings added since (and so has another hash):
    # upgrading alone must not re-run a finished stage (an SFT of hours), using the new setting must.
    common = ["--preset", "numberline-tiny", f"run.output_dir={tmp_path}", "run.name=run", "collect.episodes=2",
              "--to", "collect"]  # fmt: skip
    assert run_cli("pipeline", *common).returncode == 0
    record_file = tmp_path / "run" / "pipeline.json"
    record = json.loads(record_file.read_text())
    entry = record["stages"]["collect"]
    default = Config().collect.epsilon
    assert entry["config"]["collect"].pop("epsilon") == default  # as if "epsilon" were newer than the record
    entry["config_sha256"] = "0" * 64
    record_file.write_text(json.dumps(record))

    again = run_cli("pipeline", *common)
    assert again.returncode == 0, again.stderr
    assert statuses(again.stdout)["collect"] == ["skipped: up to date"]

    used = run_cli("pipeline", *common, f"collect.epsilon={default + 0.25}")
    assert used.returncode == 0, used.stderr
    assert statuses(used.stdout)["collect"][0].startswith(
        f"running: its config changed, collect.epsilon: (not recorded) -> {default + 0.25!r}"
    )
