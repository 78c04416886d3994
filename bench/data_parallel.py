"""Data-parallel figures (issue 20): PPO and SFT on 1 vs N GPUs through vlmppo's own multi-GPU launch.

What it runs, each through the CLI exactly as a user would (``vlmppo ppo|sft ... --launch L --gpus N``):

- PPO, Qwen2-VL-2B shape (random bf16 weights) on the ``numberline-qwen`` preset, the same ``env.n_envs`` per
  GPU: one GPU (no launcher), DDP on N, ZeRO-2 on N. Per run: rollout env-steps/s (all ranks), update
  answer-tokens/s (answer tokens of the global rollout x epochs / update seconds), the fullest GPU's peak
  memory against the dry-run's per-GPU estimate (``vlmppo.memory.estimate_ppo_memory``).
- SFT of the same model on an expert-labelled numberline dataset: one GPU, DDP, ZeRO-2 and ZeRO-3 on N:
  samples/s (all ranks) and the fullest GPU's peak memory.
- A kill and ``--resume auto`` of the N-GPU DDP PPO run: SIGTERM to one rank after its second update, then
  the resume; the metrics rows must be 1..U with none lost or repeated.

A ZeRO launch without DeepSpeed installed is reported as skipped (the one-line error vlmppo gives), not failed.
Writes ``$OUT/data_parallel.md`` (the tables) and ``$OUT/data_parallel.json``.

GPU (2 GPUs, ~8 min per part): ``OUT=$OUT python bench/data_parallel.py --gpus 2 --only ppo`` (then ``sft``,
``resume``); ``source bench/gpu_env.sh`` first for the wheels the image lacks (carry ``.whl/``).
``DRY=1``: the same code path on the CPU at tiny size (tiny Qwen2-VL, CPU ranks on gloo, a few steps): how
the script is tested (tests/test_bench_data_parallel.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DRY = os.environ.get("DRY") == "1"
# Per GPU (per rank): envs, rollout steps, answer length, micro-batch; SFT steps and batch per GPU.
SIZES = (
    {"n_envs": 2, "n_steps": 2, "max_new_tokens": 8, "micro": 2, "sft_steps": 4, "sft_batch": 2}
    if DRY
    else {"n_envs": 32, "n_steps": 4, "max_new_tokens": 128, "micro": 8, "sft_steps": 20, "sft_batch": 4}
)


def model_overrides() -> list[str]:
    if DRY:
        return ["model.path=tiny:qwen2-vl", "model.family=qwen2-vl"]
    from vlmppo.models.shapes import QWEN2_VL_2B, shape_model_path

    return [f"model.path={shape_model_path(QWEN2_VL_2B, device='cuda')}", "model.family=qwen2-vl"]


def ppo_overrides(out: Path, name: str, updates: int, gpus: int) -> list[str]:
    """``updates`` updates of ``env.n_envs`` envs per GPU (``ppo.total_env_steps`` counts every rank's)."""
    s = SIZES
    rollout = s["n_envs"] * s["n_steps"]
    return [
        "--preset", "numberline-qwen", *model_overrides(), "ppo.init_from=null", f"env.n_envs={s['n_envs']}",
        f"ppo.n_steps={s['n_steps']}", f"ppo.minibatch_size={rollout}", f"ppo.micro_batch_size={s['micro']}",
        "ppo.n_epochs=1", f"ppo.max_new_tokens={s['max_new_tokens']}", "ppo.save_every=1",
        f"run.output_dir={out / 'runs'}", f"run.name={name}", f"ppo.total_env_steps={updates * rollout * gpus}",
    ]  # fmt: skip


def launch_args(launch: str, gpus: int) -> list[str]:
    return [] if gpus == 1 else ["--launch", launch, "--gpus", str(gpus)]


def vlmppo(*args: str, timeout: float = 540) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", **({"OMP_NUM_THREADS": "1"} if DRY else {"NCCL_NVLS_ENABLE": "0"})}
    return subprocess.run([sys.executable, "-m", "vlmppo", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def skipped(launch: str) -> str | None:
    """Why a launch cannot run here (ZeRO without DeepSpeed), else None."""
    if launch.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        return "DeepSpeed is not installed"
    return None


def estimate(args: list[str], world: int) -> float | None:
    from vlmppo.config import load_config
    from vlmppo.memory import estimate_ppo_memory

    overrides = [a for a in args[2:] if "=" in a and not a.startswith("--")]
    launch = args[args.index("--launch") + 1] if "--launch" in args else "single"
    est = estimate_ppo_memory(
        load_config("numberline-qwen", overrides=[*overrides, f"ppo.launch={launch}"]), world
    )
    return None if est is None else round(est.peak_gb, 2)


def ppo_run(out: Path, launch: str, gpus: int, updates: int = 3) -> dict:
    """One PPO run; its figures averaged over the updates after the first (warm-up)."""
    name = f"ppo-{launch}-{gpus}"
    row: dict = {"stage": "ppo", "launch": launch, "gpus": gpus}
    if (why := skipped(launch)) and gpus > 1:
        return {**row, "skipped": why}
    args = ppo_overrides(out, name, updates, gpus)
    result = vlmppo("ppo", *args, *launch_args(launch, gpus))
    metrics = rows(out / "runs" / name / "ppo" / "metrics.jsonl")
    if result.returncode != 0 or not metrics:
        return {**row, "failed": (result.stderr or result.stdout)[-1500:]}
    warm = metrics[1:] or metrics
    rollout = SIZES["n_envs"] * SIZES["n_steps"] * gpus

    def mean(key):
        values = [m[key] for m in warm if m.get(key) is not None]
        return round(sum(values) / len(values), 2) if values else None

    update_tokens = [m["rollout/answer_tokens_mean"] * rollout / m["time/update_s"] for m in warm]
    return {
        **row,
        "env_steps_per_s": mean("time/env_steps_per_s"),
        "update_answer_tokens_per_s": round(sum(update_tokens) / len(update_tokens), 1),
        "peak_gb": mean("sys/gpu_mem_peak_gb"),
        "estimate_gb": estimate(["ppo", *args, *launch_args(launch, gpus)], gpus),
        "launched": next(
            (line for line in result.stdout.splitlines() if line.startswith("launching:")), None
        ),
    }


def sft_data(out: Path) -> list[str]:
    """An expert-labelled numberline dataset for the SFT runs (collected once)."""
    base = [
        "--preset",
        "numberline-qwen",
        *model_overrides(),
        f"run.output_dir={out / 'runs'}",
        "run.name=data",
    ]
    episodes = 16 if DRY else 200
    if not (out / "runs" / "data" / "data" / "train.jsonl").is_file():
        stages = (("collect", [f"collect.episodes={episodes}", "collect.policy=expert"]),
                  ("label", ["label.labeller=expert"]), ("preprocess", []))  # fmt: skip
        for stage, extra in stages:
            result = vlmppo(stage, *base, *extra)
            if result.returncode != 0:
                raise SystemExit(f"{stage} failed:\n{result.stderr[-2000:]}")
    data = out / "runs" / "data" / "data"
    return [f"sft.train_file={data / 'train.jsonl'}", f"sft.val_file={data / 'val.jsonl'}"]


def sft_run(out: Path, launch: str, gpus: int, data: list[str]) -> dict:
    name = f"sft-{launch}-{gpus}"
    row: dict = {"stage": "sft", "launch": launch, "gpus": gpus}
    if why := skipped(launch):
        return {**row, "skipped": why}
    args = ["--preset", "numberline-qwen", *model_overrides(), *data, f"run.output_dir={out / 'runs'}",
            f"run.name={name}", f"sft.max_steps={SIZES['sft_steps']}", f"sft.batch_size={SIZES['sft_batch']}",
            "sft.eval_every=100000", "sft.save_every=100000"]  # fmt: skip
    result = vlmppo("sft", *args, *launch_args(launch, gpus))
    metrics = [m for m in rows(out / "runs" / name / "sft" / "metrics.jsonl") if not m.get("final")]
    if result.returncode != 0 or not metrics:
        return {**row, "failed": (result.stderr or result.stdout)[-1500:]}
    warm = metrics[1:] or metrics
    peaks = [m["sys/gpu_mem_peak_gb"] for m in warm if "sys/gpu_mem_peak_gb" in m]
    return {
        **row,
        "samples_per_s": round(sum(m["time/samples_per_s"] for m in warm) / len(warm), 2),
        "peak_gb": round(max(peaks), 2) if peaks else None,
    }


def kill_and_resume(out: Path, gpus: int, updates: int = 4) -> dict:
    """SIGTERM to the last rank after the second update of an N-rank DDP run, then ``--resume auto``."""
    name = "ppo-resume"
    args = ["ppo", *ppo_overrides(out, name, updates, gpus), "--launch", "ddp", "--gpus", str(gpus)]
    env = {**os.environ, "COLUMNS": "200", **({"OMP_NUM_THREADS": "1"} if DRY else {"NCCL_NVLS_ENABLE": "0"})}
    launcher = subprocess.Popen([sys.executable, "-m", "vlmppo", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics = out / "runs" / name / "ppo" / "metrics.jsonl"
    deadline = time.time() + 420
    while len(rows(metrics)) < 2 and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    ranks = children(launcher.pid)
    if ranks:
        os.kill(ranks[-1], signal.SIGTERM)
    launcher.communicate(timeout=300)
    stopped = [m["update"] for m in rows(metrics)]
    result = vlmppo(*args, "--resume", "auto")
    every = [m["update"] for m in rows(metrics)]
    return {
        "stage": "ppo kill + resume", "gpus": gpus, "stopped_after": stopped, "rows": every,
        "passed": result.returncode == 0 and every == list(range(1, updates + 1)) and len(stopped) < updates,
    }  # fmt: skip


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return sorted(found)


def table(results: list[dict]) -> str:
    columns = ["stage", "launch", "gpus", "env_steps_per_s", "update_answer_tokens_per_s", "samples_per_s",
               "peak_gb", "estimate_gb", "skipped", "failed", "rows", "passed"]  # fmt: skip
    used = [c for c in columns if any(c in r for r in results)]
    lines = ["| " + " | ".join(used) + " |", "|" + "---|" * len(used)]
    for r in results:
        cells = [str(r.get(c, "")).replace("\n", " ")[:200] for c in used]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--gpus", type=int, default=2, help="GPUs of the data-parallel runs (CPU ranks with DRY=1)."
    )
    ap.add_argument(
        "--only", default="ppo,sft,resume", help="Which parts: ppo, sft, resume (comma-separated)."
    )
    args = ap.parse_args(argv)
    out = Path(os.environ.get("OUT", "bench/out"))
    out.mkdir(parents=True, exist_ok=True)
    parts, results = args.only.split(","), []
    if "ppo" in parts:
        for launch, gpus in (("single", 1), ("ddp", args.gpus), ("zero2", args.gpus)):
            results.append(ppo_run(out, launch, gpus))
            print(json.dumps(results[-1]), flush=True)
    if "sft" in parts:
        data = sft_data(out)
        for launch, gpus in (("single", 1), ("ddp", args.gpus), ("zero2", args.gpus), ("zero3", args.gpus)):
            results.append(sft_run(out, launch, gpus, data))
            print(json.dumps(results[-1]), flush=True)
    if "resume" in parts:
        results.append(kill_and_resume(out, args.gpus))
        print(json.dumps(results[-1]), flush=True)
    card = "CPU (DRY=1: tiny model, gloo ranks)" if DRY else "GPU"
    (out / "data_parallel.md").write_text(f"# Data-parallel figures ({card})\n\n{table(results)}\n")
    (out / "data_parallel.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if not any("failed" in r or r.get("passed") is False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
