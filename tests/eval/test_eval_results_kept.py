"""An eval never silently replaces another's results or the run's config.yaml, and two evals of one
checkpoint at once both finish (real processes, the expert and random baselines: no model to load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml
from tests.helpers import run_cli

from vlmppo.config import load_config
from vlmppo.eval.runner import evaluate

PRESET = "numberline-tiny"


def common(out):
    return ["--preset", PRESET, f"run.output_dir={out}", "run.name=run"]


def metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_a_second_eval_into_the_same_folder_is_refused_without_overwrite(tmp_path):
    folder = tmp_path / "run/eval/random"
    first = run_cli("eval", *common(tmp_path), "--policy", "random", "--episodes", "4")
    assert first.returncode == 0, first.stderr
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    second = run_cli("eval", *common(tmp_path), "--policy", "random", "--episodes", "2")
    assert second.returncode == 1
    assert f"{folder} already holds an evaluation (4 episodes" in second.stderr
    assert "--overwrite" in second.stderr and "Traceback" not in second.stderr
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before

    third = run_cli("eval", *common(tmp_path), "--policy", "random", "--episodes", "2", "--overwrite")
    assert third.returncode == 0, third.stderr
    assert metrics(folder)["episodes"] == 2


def test_an_eval_keeps_its_config_in_its_own_folder_and_leaves_the_runs_config_alone(tmp_path):
    run_config = tmp_path / "run/config.yaml"
    run_config.parent.mkdir(parents=True)
    run_config.write_text("# the pipeline's config\n")
    out = run_cli("eval", *common(tmp_path), "--policy", "expert", "--episodes", "3")
    assert out.returncode == 0, out.stderr
    assert run_config.read_text() == "# the pipeline's config\n"
    saved = yaml.safe_load((tmp_path / "run/eval/expert/config.yaml").read_text())
    assert saved["eval"]["episodes"] == 3 and saved["run"]["name"] == "run"


def test_two_evals_of_one_checkpoint_at_once_both_finish(tmp_path):
    # Each draws 8 captioned GIFs, so both spend seconds writing their folder at about the same time.
    args = [*common(tmp_path), "--policy", "expert", "--episodes", "8", "eval.trajectories=8", "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "vlmppo", "eval", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in results] == [0, 0], results
    eval_dir = tmp_path / "run/eval"
    assert sorted(p.name for p in eval_dir.iterdir()) == ["expert"]  # no staging folder left behind
    assert metrics(eval_dir / "expert")["episodes"] == 8


def test_an_eval_whose_folder_was_taken_while_it_played_goes_beside_it(tmp_path):
    cfg = load_config(PRESET, overrides=[f"run.output_dir={tmp_path}", "run.name=run", "eval.episodes=3"])
    other = load_config(PRESET, overrides=[f"run.output_dir={tmp_path}", "run.name=run", "eval.episodes=2"])
    done = []

    def another_eval_finishes_first(n, total):
        if not done:
            done.append(evaluate(other, policy="random"))

    result = evaluate(cfg, policy="random", on_episode=another_eval_finishes_first)
    assert done[0].out_dir.name == "random" and metrics(done[0].out_dir)["episodes"] == 2
    assert result.out_dir.name == "random-2" and metrics(result.out_dir)["episodes"] == 3
