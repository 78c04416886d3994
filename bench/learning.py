"""One task's whole learning protocol within one time budget (docs/learning.md): bench/gpu_learning.sh runs it.

Stages, each a `vlmppo` command of the product (stdout and stderr go to the log):

1. data: ``vlmppo pipeline --to preprocess`` (expert collection with epsilon noise, expert labels, the SFT set);
2. weak start: ``vlmppo sft`` on a small random slice of the training set for a few steps (``<run>-weak``); its
   samples/s sizes the next stage;
3. strong SFT: ``vlmppo pipeline --from sft --to sft`` with ``sft.max_steps`` sized to the time it gets;
4. PPO from the weak start: ``vlmppo ppo`` until its time is up (SIGUSR1: it ends the update, saves, exits);
5. evaluations: ``vlmppo eval`` of the expert and random baselines and of each checkpoint (greedy, seeded);
6. the report: ``learning-<task>.md`` / ``.json`` / ``.png`` (curves) in $OUT.

Environment: TASK (numberline | minigrid-empty | minigrid-doorkey | ezpoints), BUDGET_S (whole call, default 510),
DRY=1 (the same commands on a CPU with a tiny model at toy sizes), SEED (run.seed, default 0), WEAK_STEPS,
WEAK_SAMPLES, SFT_STEPS (a cap on the strong SFT), SFT_SHARE (its share of the time left, default 0.5), EXTRA
(overrides added to every command), RUNS (the runs folder, default /tmp/learning-runs).
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

TASKS = {
    "numberline": "numberline-small",
    "minigrid-empty": "minigrid-empty-small",
    "minigrid-doorkey": "minigrid-doorkey-small",
    "ezpoints": "ezpoints-small",
}
# DRY=1: every stage at toy size on a CPU, with a tiny model (the code path, not the learning).
DRY_OVERRIDES = [
    "run.device=cpu", "model.path=tiny:qwen2-vl", "model.dtype=auto", "collect.episodes=6", "env.n_envs=2",
    "sft.batch_size=4", "sft.eval_every=2", "sft.save_every=2", "preprocess.val_fraction=0.2",
    "ppo.n_steps=4", "ppo.total_env_steps=16", "ppo.minibatch_size=8", "ppo.micro_batch_size=4", "ppo.n_epochs=1", "ppo.save_every=1",
    "ppo.max_new_tokens=24", "ppo.eval_episodes=2", "eval.episodes=2", "eval.max_new_tokens=24", "eval.trajectories=1",
]  # fmt: skip
EVAL_KEYS = ("success_rate", "success_ci95", "solved_rate", "return_mean", "length_mean", "invalid_action_rate",
             "episodes", "wall_s")  # fmt: skip


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.monotonic(), seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


class Protocol:
    """The commands of one task, their wall times and the numbers they leave behind."""

    def __init__(self):
        self.task = os.environ.get("TASK", "numberline")
        if self.task not in TASKS:
            sys.exit(f"TASK={self.task!r} is not one of {', '.join(TASKS)}")
        self.preset, self.dry = TASKS[self.task], os.environ.get("DRY") == "1"
        self.out = Path(os.environ.get("OUT", "bench/out"))
        self.runs = Path(os.environ.get("RUNS", "/tmp/learning-runs"))
        self.seed = int(os.environ.get("SEED", "0"))
        self.budget = Budget(float(os.environ.get("BUDGET_S", "510")))
        self.name = f"{self.preset}-s{self.seed}"
        self.weak = f"{self.name}-weak"
        self.log = self.out / f"learning-{self.task}.log"
        self.common = [f"run.output_dir={self.runs}", f"run.seed={self.seed}"]
        self.common += (DRY_OVERRIDES if self.dry else []) + shlex.split(os.environ.get("EXTRA", ""))
        self.report: dict = {"task": self.task, "preset": self.preset, "dry": self.dry, "seed": self.seed,
                             "budget_s": self.budget.seconds, "stages": [], "results": {},
                             "common_overrides": self.common}  # fmt: skip

    def vlmppo(self, stage: str, args: list[str], *, box_s: float | None = None) -> float:
        """Run ``python -m vlmppo <args>`` (the common overrides added), logged; past ``box_s`` seconds it gets
        SIGUSR1 (SFT and PPO then finish their step, save a checkpoint and exit), 90 s later SIGKILL."""
        command = [sys.executable, "-m", "vlmppo", *args, *self.common]
        started = time.monotonic()
        with open(self.log, "a") as log:
            log.write(f"\n$ {shlex.join(command)}\n")
            log.flush()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                process.wait(timeout=box_s)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGUSR1)
                try:
                    process.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        seconds = time.monotonic() - started
        stopped = box_s is not None and seconds >= box_s
        self.report["stages"].append({"stage": stage, "command": "vlmppo " + shlex.join(args), "rc": process.returncode,
                                      "wall_s": round(seconds, 1), "time_boxed": stopped})  # fmt: skip
        print(f"[{self.budget.left():6.0f} s left] {stage}: rc {process.returncode}, {seconds:.0f} s"
              + (" (time box reached)" if stopped else ""), flush=True)  # fmt: skip
        return seconds

    @property
    def report_stem(self) -> Path:
        return self.out / f"learning-{self.task}"

    def run_dir(self, name: str) -> Path:
        return self.runs / name

    def data(self) -> None:
        self.vlmppo(
            "data", ["pipeline", "--preset", self.preset, "--to", "preprocess", f"run.name={self.name}"]
        )
        train = self.run_dir(self.name) / "data" / "train.jsonl"
        lines = train.read_text().splitlines()
        self.report["data"] = {"train_samples": len(lines),
                               "val_samples": len((train.parent / "val.jsonl").read_text().splitlines())}  # fmt: skip
        # The weak start's slice: a seeded random sample of the training set (beside it: image paths are relative).
        size = int(os.environ.get("WEAK_SAMPLES", "8" if self.dry else "2000"))
        random.Random(self.seed).shuffle(lines)
        (train.parent / "train-weak.jsonl").write_text("\n".join(lines[:size]) + "\n")
        self.report["data"]["weak_slice"] = min(size, len(lines))

    def weak_args(self) -> list[str]:
        data = self.run_dir(self.name) / "data"
        return [
            f"run.name={self.weak}",
            f"sft.train_file={data / 'train-weak.jsonl'}",
            f"sft.val_file={data / 'val.jsonl'}",
        ]

    def eval(self, label: str, name: str, which: list[str]) -> None:
        started = time.time()
        self.vlmppo(
            f"eval {label}", ["eval", "--preset", self.preset, *which, "--overwrite", f"run.name={name}"]
        )
        # The metrics this eval wrote (a failed eval leaves none: an older one must not stand in for it).
        written = [
            p for p in (self.run_dir(name) / "eval").glob("*/metrics.json") if p.stat().st_mtime >= started
        ]
        folders = sorted(written, key=lambda p: p.stat().st_mtime)
        if folders:
            metrics = json.loads(folders[-1].read_text())
            self.report["results"][label] = {k: metrics.get(k) for k in EVAL_KEYS} | {
                "folder": str(folders[-1].parent)
            }

    def sft_rate(self, name: str) -> float | None:
        """Median samples/s of a run's SFT steps (its first tenth left out: CUDA warm-up)."""
        rows = read_jsonl(self.run_dir(name) / "sft" / "metrics.jsonl")
        rates = [r["time/samples_per_s"] for r in rows if "time/samples_per_s" in r]
        return statistics.median(rates[len(rates) // 10 :]) if rates else None

    def sft_summary(self, name: str) -> dict:
        rows = read_jsonl(self.run_dir(name) / "sft" / "metrics.jsonl")
        steps = [r for r in rows if "sft/loss" in r]
        final = next((r for r in reversed(rows) if r.get("final")), {})
        return {"steps": steps[-1]["step"] if steps else 0, "samples": steps[-1]["samples"] if steps else 0,
                "samples_per_s": self.sft_rate(name), "last_loss": steps[-1]["sft/loss"] if steps else None,
                "eval_loss": final.get("eval/loss"), "val_action_acc": final.get("eval/action_acc")}  # fmt: skip

    def run(self) -> None:
        self.data()
        weak_steps = os.environ.get("WEAK_STEPS", "3" if self.dry else "150")
        self.vlmppo("weak sft", ["sft", "--preset", self.preset, *self.weak_args(), f"sft.max_steps={weak_steps}",
                                 f"sft.eval_every={weak_steps}", f"sft.save_every={weak_steps}"])  # fmt: skip
        for policy in ("expert", "random"):
            self.eval(policy, self.name, ["--policy", policy])
        eval_s = self.vlmppo_eval_timed("weak sft", self.weak, ["--ckpt", "sft"])
        self.strong_sft(eval_s)
        self.eval("strong sft", self.name, ["--ckpt", "sft"])
        box = self.budget.left() - 1.3 * eval_s - 45  # the signal's update + save, then the last eval
        if box < 45 and not self.dry:
            self.report["notes"] = [f"no time left for PPO ({box:.0f} s)"]
        else:
            self.vlmppo("weak + ppo", ["ppo", "--preset", self.preset, *self.weak_args(), "ppo.init_from=sft"],
                        box_s=None if self.dry else box)  # fmt: skip
            self.eval("weak + ppo", self.weak, ["--ckpt", "ppo"])

    def gather(self) -> None:
        """The training curves and summaries, whatever stage the run reached."""
        self.report["sft"] = {"strong": self.sft_summary(self.name), "weak": self.sft_summary(self.weak)}
        self.report["sft_curves"] = {n: read_jsonl(self.run_dir(r) / "sft" / "metrics.jsonl")
                                     for n, r in (("strong", self.name), ("weak", self.weak))}  # fmt: skip
        self.report["ppo"] = read_jsonl(self.run_dir(self.weak) / "ppo" / "metrics.jsonl")

    def vlmppo_eval_timed(self, label: str, name: str, which: list[str]) -> float:
        started = time.monotonic()
        self.eval(label, name, which)
        return time.monotonic() - started

    def strong_sft(self, eval_s: float) -> None:
        """Strong SFT, its steps sized from the weak run's samples/s to its share of the time left."""
        batch = 4 if self.dry else 64
        rate = self.sft_rate(self.weak) or 100.0
        share = float(os.environ.get("SFT_SHARE", "0.5"))
        # The rest: two evals, PPO's start and its last update and save after the signal (~60 s), PPO itself.
        seconds = max(30.0, share * (self.budget.left() - 2 * eval_s - 60))
        cap = int(os.environ.get("SFT_STEPS", "4" if self.dry else "3000"))
        steps = max(1, min(cap, int(rate * seconds / batch)))
        self.report["strong_sft_plan"] = {"seconds": round(seconds), "samples_per_s": rate, "steps": steps}
        self.vlmppo("strong sft", ["pipeline", "--preset", self.preset, "--from", "sft", "--to", "sft",
                                   f"run.name={self.name}", f"sft.max_steps={steps}"],
                    box_s=None if self.dry else seconds * 1.4 + 60)  # fmt: skip


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as exc:  # a report without the GPU's name is still a report
        return f"unknown ({exc})"


def main(make_protocol=None) -> None:
    """Run a protocol (``Protocol``, or the one ``make_protocol`` builds) and write its report, whatever stage
    it reached."""
    protocol = (make_protocol or Protocol)()
    protocol.out.mkdir(parents=True, exist_ok=True)
    protocol.report["gpu"] = gpu_name()
    try:
        protocol.run()
    finally:
        protocol.report["wall_s"] = round(time.monotonic() - protocol.budget.start, 1)
        protocol.gather()
        from learning_report import write_report  # beside this file

        write_report(protocol.report, protocol.report_stem)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
