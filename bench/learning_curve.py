"""The learning protocol in two phases that share one runs folder (docs/learning.md, "the curve protocol"):

PHASE=sft: expert data, the expert and random baselines, then ONE long SFT run that saves a checkpoint every
``SFT_STEPS / CURVE_POINTS`` steps, and a greedy eval of each of those checkpoints: success against SFT samples.
PHASE=rl: the weak start is the best of those checkpoints at or below ``WEAK_MAX`` success (0.6; or the
checkpoint ``WEAK_CKPT`` names), and PPO runs from it until its time is up, then its eval.
PHASE=all: both in one call.

Why two phases: a weak start picked from the strong run's own curve is a policy that reads *some* of what it
must read (a start that reads nothing gives RL a reward uncorrelated with its readings: run 2 of
docs/learning.md), and the SFT curve answers "how many samples does reading take" in the same run. The phases can
run in two back-to-back calls of the GPU tool (RUNS inside the tree, e.g. .gpu/learning-runs, which git ignores),
but a call on the still-warm machine has once found that folder gone: PHASE=all in one call is the safe way.

Environment, besides bench/learning.py's (TASK, BUDGET_S, SEED, EXTRA, RUNS, DRY): PHASE, SFT_STEPS (the long
run's max_steps, 3000 by default; the budget also time-boxes it), CURVE_POINTS (checkpoints evaluated, 5),
CURVE_MIN_STEP (evaluate only the checkpoints from this step on), CURVE_IN_RUN (1: the SFT run plays the
checkpoints' greedy episodes itself, CURVE_EPISODES per eval seed; a checkpoint without such an eval, e.g. an
SFT_STOP_STEP, still gets a ``vlmppo eval``), WEAK_MAX, WEAK_CKPT, SFT_STOP_STEP (the long run
stops after this step, saved, its schedule still SFT_STEPS': the same weak start every run), SFT_BOX_S (the long
SFT's time box in seconds, instead of the one sized from the budget), EVAL_CURVE (0: do not evaluate the
checkpoints), RL_S (with PHASE=all: the seconds kept for the RL phase, 170), RL_TAG and RL_EXTRA (a name for one
RL variant and the overrides only its PPO command gets: several variants can start from one weak checkpoint at
once, each in its own run ``<name>-rl-<tag>`` with its own report; bench/gpu_learning_sweep.sh).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from learning import Protocol, main, read_jsonl  # noqa: E402  (beside this file)


def pick_weak_start(points: list[dict], ceiling: float) -> dict | None:
    """The checkpoint RL starts from: the most successful one at or below ``ceiling`` (the later on a tie, it
    read more); None when every checkpoint is above it or none was evaluated."""
    below = [p for p in points if p.get("success_rate") is not None and p["success_rate"] <= ceiling]
    return max(below, key=lambda p: (p["success_rate"], p["step"])) if below else None


def samples_by_step(rows: list[dict], step: int) -> int | None:
    """Training samples seen at ``step``: from the newest metrics row at or before it."""
    seen = [r for r in rows if r.get("samples") is not None and r.get("step", 1 << 62) <= step]
    return max(seen, key=lambda r: r["step"])["samples"] if seen else None


class CurveProtocol(Protocol):
    """Phase ``sft`` or ``rl`` (or both) of the curve protocol; the report goes to ``learning-<task>-<phase>``."""

    def __init__(self):
        super().__init__()
        self.phase = os.environ.get("PHASE", "all")
        if self.phase not in ("sft", "rl", "all"):
            sys.exit(f"PHASE={self.phase!r} is not one of sft, rl, all")
        self.rl_tag = os.environ.get("RL_TAG", "")
        self.rl_name = f"{self.name}-rl" + (f"-{self.rl_tag}" if self.rl_tag else "")
        self.rl_extra = shlex.split(os.environ.get("RL_EXTRA", ""))
        self.report["protocol"] = "curve"
        self.report["phase"] = self.phase
        self.report["rl_variant"] = {"tag": self.rl_tag, "overrides": self.rl_extra}
        self.curve_file = self.run_dir(self.name) / "curve.json"
        self.log = self.report_stem.with_suffix(".log")

    @property
    def report_stem(self) -> Path:
        tag = f"-{self.rl_tag}" if self.rl_tag and self.phase == "rl" else ""
        return self.out / f"learning-{self.task}-{self.phase}{tag}"

    # -- phase sft ---------------------------------------------------------------------------------------
    def long_sft(self) -> None:
        steps = int(os.environ.get("SFT_STEPS", "4" if self.dry else "3000"))
        points = int(os.environ.get("CURVE_POINTS", "2" if self.dry else "5"))
        every = max(1, steps // points)
        # The evals after it: one per point, ~30 s each on the GPU machine (a 14M model, 200 episodes).
        # PHASE=all keeps RL_S seconds of the budget for the RL phase (PPO and its eval).
        rl_s = float(os.environ.get("RL_S", "170")) if self.phase == "all" else 0.0
        in_run = self.in_run_episodes()  # the evals then run inside the SFT's box: one eval process kept
        evals_s = 35 if in_run else 35 * (points + 1)
        box = None if self.dry else max(60.0, self.budget.left() - evals_s - 20 - rl_s)
        if os.environ.get("SFT_BOX_S"):  # a fixed time box: to reach a given checkpoint and no more
            box = float(os.environ["SFT_BOX_S"])
        stop = os.environ.get("SFT_STOP_STEP")
        plan = {
            "steps": steps,
            "save_every": every,
            "time_box_s": box,
            "stop_at": stop,
            "in_run_episodes": in_run,
        }
        self.report["long_sft_plan"] = plan
        self.vlmppo("long sft", ["pipeline", "--preset", self.preset, "--from", "sft", "--to", "sft",
                                 f"run.name={self.name}", f"sft.max_steps={steps}", f"sft.save_every={every}",
                                 f"sft.eval_every={every}", "sft.keep_last=null",
                                 *([f"sft.stop_at_step={stop}"] if stop else []),
                                 *([f"sft.eval_episodes={in_run}"] if in_run else [])],
                    box_s=box)  # fmt: skip

    def in_run_episodes(self) -> int | None:
        """CURVE_IN_RUN=1: the SFT run plays each checkpoint's greedy episodes itself (``sft.eval_episodes``,
        the model already loaded) instead of one ``vlmppo eval`` process per checkpoint (~20 s alone on the GPU
        machine, 50-170 s with other tasks); CURVE_EPISODES per eval seed (200, the presets' eval.episodes)."""
        if os.environ.get("CURVE_IN_RUN", "0") != "1":
            return None
        return int(os.environ.get("CURVE_EPISODES", "2" if self.dry else "200"))

    def in_run_points(self, rows: list[dict]) -> dict[int, dict]:
        """The SFT run's own greedy evals by step, in the shape of a ``vlmppo eval`` result."""
        from vlmppo.eval.metrics import wilson_interval

        points = {}
        for r in rows:
            if r.get("eval/success_rate") is None or r.get("final"):
                continue
            n = int(r["eval/episodes"])
            points[int(r["step"])] = {
                "success_rate": r["eval/success_rate"],
                "success_ci95": list(wilson_interval(round(r["eval/success_rate"] * n), n)),
                "solved_rate": r.get("eval/solved_rate"), "return_mean": r.get("eval/return_mean"),
                "length_mean": r.get("eval/length_mean"), "invalid_action_rate": r.get("eval/invalid_action_rate"),
                "episodes": n, "wall_s": r.get("time/env_eval_s"), "in_run": True,
            }  # fmt: skip
        return points

    def checkpoints(self) -> list[Path]:
        root = self.run_dir(self.name) / "sft" / "checkpoints"
        return sorted(p for p in root.glob("[0-9]*") if p.is_dir()) if root.is_dir() else []

    def curve(self) -> list[dict]:
        """A greedy eval of every numbered SFT checkpoint, newest first (the time may run out); with
        CURVE_IN_RUN=1 the SFT run's own eval at that step where it made one."""
        points = []
        first = int(os.environ.get("CURVE_MIN_STEP", "0"))
        rows = read_jsonl(self.run_dir(self.name) / "sft" / "metrics.jsonl")
        in_run = self.in_run_points(rows) if self.in_run_episodes() else {}
        for ckpt in reversed([c for c in self.checkpoints() if int(c.name) >= first]):
            if int(ckpt.name) in in_run:
                points.append({"step": int(ckpt.name), "checkpoint": str(ckpt), **in_run[int(ckpt.name)]})
                self.report["results"][f"sft step {int(ckpt.name)}"] = in_run[int(ckpt.name)]
                continue
            if not self.dry and self.budget.left() < 40:
                self.report.setdefault("notes", []).append(f"no time left to evaluate {ckpt.name}")
                break
            label = f"sft step {int(ckpt.name)}"
            self.eval(label, self.name, ["--ckpt", str(ckpt)])
            result = self.report["results"].get(label)
            if result:
                points.append({"step": int(ckpt.name), "checkpoint": str(ckpt), **result})
        points.sort(key=lambda p: p["step"])
        for p in points:  # the samples seen by then, from the run's own metrics
            p["samples"] = samples_by_step(rows, p["step"])
        self.curve_file.write_text(json.dumps(points, indent=1) + "\n")
        return points

    # -- phase rl ----------------------------------------------------------------------------------------
    def weak_start(self) -> dict | None:
        if os.environ.get("WEAK_CKPT"):
            return {"checkpoint": os.environ["WEAK_CKPT"], "success_rate": None, "step": None}
        if not self.curve_file.is_file():
            return None
        points = json.loads(self.curve_file.read_text())
        return pick_weak_start(points, float(os.environ.get("WEAK_MAX", "0.6")))

    def rl(self) -> None:
        start = self.weak_start()
        self.report["weak_start"] = start
        if start is None:
            self.report.setdefault("notes", []).append(
                f"no weak start: no SFT checkpoint at or below WEAK_MAX in {self.curve_file} (run PHASE=sft first)"
            )
            return
        if start.get("success_rate") is not None:
            self.report["results"]["weak sft"] = {"success_rate": start["success_rate"],
                                                  "success_ci95": start.get("success_ci95"),
                                                  "episodes": start.get("episodes")}  # fmt: skip
        box = None if self.dry else self.budget.left() - 75  # the signal's update + save, then the eval
        self.vlmppo("weak + ppo", ["ppo", "--preset", self.preset, f"run.name={self.rl_name}",
                                   f"ppo.init_from={start['checkpoint']}", *self.rl_extra], box_s=box)  # fmt: skip
        self.eval("weak + ppo", self.rl_name, ["--ckpt", "ppo"])

    def run(self) -> None:
        if self.phase in ("sft", "all"):
            self.data()
            for policy in ("expert", "random"):
                self.eval(policy, self.name, ["--policy", policy])
            self.long_sft()
            # EVAL_CURVE=0: no eval of the checkpoints (an RL run's update-0 greedy eval measures its start).
            self.report["curve"] = self.curve() if os.environ.get("EVAL_CURVE", "1") != "0" else []
            if self.report["curve"]:
                self.report["results"]["strong sft"] = self.report["curve"][-1]
        if self.phase in ("rl", "all"):
            self.rl()

    def gather(self) -> None:
        self.report["sft"] = {"strong": self.sft_summary(self.name)}
        self.report["sft_curves"] = {"long": read_jsonl(self.run_dir(self.name) / "sft" / "metrics.jsonl")}
        self.report["ppo"] = read_jsonl(self.run_dir(self.rl_name) / "ppo" / "metrics.jsonl")


if __name__ == "__main__":
    main(CurveProtocol)
