"""The whole `vlmppo ppo` loop against the rollout bench, for bench/gpu_ppo.sh (issue 18).

Two subcommands, both given the loop's own ``--preset`` and overrides, so the bench measures exactly the
loop's settings:

* ``bench``: ``vlmppo bench``'s rollout measurement (``benchmark.rollout.measure_rollout``: ``rollout_step``
  + the env step, one untimed warm-up step, answers forced to ``ppo.max_new_tokens`` as random weights
  write them anyway) at ``env.n_envs``, on the model the loop loads; writes a JSON row.
* ``report``: reads that row, the loop's ``metrics.jsonl`` and the dry-run's estimate (computed here by the
  same function, with its terms) and prints one markdown table per env count plus a summary: the loop's
  steady rollout rate beside the bench's, and the estimate beside the peak of each phase.

    python bench/ppo_loop_report.py bench --out B.json -- --preset numberline-qwen model.path=... env.n_envs=32
    python bench/ppo_loop_report.py report --bench B.json --metrics runs/x/ppo/metrics.jsonl --out R.md -- ...
    python bench/ppo_loop_report.py summary R1.json R2.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KEYS = ["update", "time/env_steps_per_s", "time/steady_env_steps_per_s", "time/rollout_s", "time/capture_s",
        "time/values_s", "time/refresh_s", "time/update_s", "sys/gpu_mem_peak_rollout_gb",
        "sys/gpu_mem_peak_update_gb", "sys/gpu_mem_peak_gb"]  # fmt: skip


def loop_config(argv: list[str]):
    """The loop's config from its command line (``--preset P key=value ...``)."""
    from vlmppo.config import load_config

    preset = argv[argv.index("--preset") + 1]
    overrides = [a for i, a in enumerate(argv) if "=" in a and (i == 0 or argv[i - 1] != "--preset")]
    return load_config(preset, None, overrides)


def bench(argv: list[str], out: Path) -> None:
    import torch

    from vlmppo.accel import make_accelerator, precision_for
    from vlmppo.benchmark.rollout import measure_rollout
    from vlmppo.benchmark.runner import AnswerLengths, bench_config
    from vlmppo.models.generation import resolve_decoder
    from vlmppo.rl.startup import build_policy
    from vlmppo.sysinfo import resolve_device

    cfg = loop_config(argv)
    device = resolve_device(cfg)
    cfg = bench_config(cfg, None, device)
    torch.manual_seed(cfg.run.seed)
    policy = build_policy(
        cfg, device, accelerator=make_accelerator(device, precision_for(cfg.ppo.mixed_precision, device))
    )
    policy.decoder = resolve_decoder(cfg.model.decoder, device)
    policy.forced_lengths = AnswerLengths(cfg.ppo.max_new_tokens, None, cfg.run.seed)
    row = measure_rollout(policy, cfg, cfg.env.n_envs, repeats=2)
    result = {"n_envs": row.n_envs, "decoder": row.decoder, "env_steps_per_s": row.env_steps_per_s,
              "seconds_per_step": row.seconds / row.steps, "generate_s": row.generate_s / row.steps,
              "score_s": row.score_s / row.steps, "peak_gib": row.peak_gib}  # fmt: skip
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def report(argv: list[str], bench_file: Path, metrics_file: Path) -> tuple[str, dict]:
    from statistics import mean

    from vlmppo.memory import OVERHEAD, estimate_ppo_memory

    cfg = loop_config(argv)
    row = json.loads(bench_file.read_text())
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    est = estimate_ppo_memory(cfg)
    lines = [f"### {cfg.env.n_envs} envs", "", "| " + " | ".join(KEYS) + " |", "|" + "---|" * len(KEYS)]
    lines += ["| " + " | ".join(_fmt(m.get(k)) for k in KEYS) + " |" for m in rows]
    steady = [m["time/steady_env_steps_per_s"] for m in rows if m.get("time/steady_env_steps_per_s")]
    loop_rate = mean(steady) if steady else None
    peak = max((m.get("sys/gpu_mem_peak_gb") or 0.0) for m in rows) or None
    phase = {
        p: max((m.get(f"sys/gpu_mem_peak_{p}_gb") or 0.0) for m in rows) or None
        for p in ("rollout", "update")
    }
    resident = est.weights_gb + est.sampler_gb + est.decoder_gb + est.trainable_state_gb if est else None
    summary = {
        "n_envs": cfg.env.n_envs,
        "bench_env_steps_per_s": row["env_steps_per_s"],
        "loop_steady_env_steps_per_s": loop_rate,
        "loop_over_bench": loop_rate / row["env_steps_per_s"] if loop_rate else None,
        "loop_whole_env_steps_per_s": [m["time/env_steps_per_s"] for m in rows],
        "estimate_gib": est.peak_gb if est else None,
        "peak_gib": peak,
        "estimate_over_peak": est.peak_gb / peak if est and peak else None,
        # Before the overhead factor (CUDA context, fragmentation: what max_memory_allocated does not count).
        "terms_over_peak": est.peak_gb / OVERHEAD / peak if est and peak else None,
        # The estimate's own phases: resident terms + that phase's term, before the overhead factor.
        "estimate_rollout_gib": resident + est.rollout_gb if est else None,
        "peak_rollout_gib": phase["rollout"],
        "estimate_update_gib": resident + est.update_gb if est else None,
        "peak_update_gib": phase["update"],
    }
    lines += ["", "summary: " + json.dumps({k: _fmt(v) if not isinstance(v, list) else [_fmt(x) for x in v]
                                           for k, v in summary.items()})]  # fmt: skip
    if est is not None:
        lines.append(f"estimate: {est.describe()}")
    return "\n".join(lines), summary


def summary_table(files: list[Path]) -> str:
    """One line per env count: the ratios the issue asks for (loop/bench >= 0.8; estimate within 15%)."""
    head = ["n_envs", "bench env-steps/s", "loop steady env-steps/s", "loop / bench", "loop whole, per update",
            "estimate GiB", "peak GiB", "estimate / peak", "terms / peak", "rollout: terms / peak GiB", "update: terms / peak GiB"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for file in files:
        s = json.loads(file.read_text())
        cells = [s["n_envs"], s["bench_env_steps_per_s"], s["loop_steady_env_steps_per_s"], s["loop_over_bench"],
                 ", ".join(_fmt(x) for x in s["loop_whole_env_steps_per_s"]), s["estimate_gib"], s["peak_gib"],
                 s["estimate_over_peak"], s["terms_over_peak"], f"{_fmt(s['estimate_rollout_gib'])} / {_fmt(s['peak_rollout_gib'])}",
                 f"{_fmt(s['estimate_update_gib'])} / {_fmt(s['peak_update_gib'])}"]  # fmt: skip
        lines.append("| " + " | ".join(c if isinstance(c, str) else _fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["bench", "report", "summary"])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--bench", type=Path)
    ap.add_argument("--metrics", type=Path)
    ap.add_argument("files", nargs="*", type=Path)
    args = ap.parse_args(argv[:cut])
    loop_argv = argv[cut + 1 :]
    if args.what == "bench":
        bench(loop_argv, args.out)
        return
    if args.what == "summary":
        print(summary_table(args.files))
        return
    text, summary = report(loop_argv, args.bench, args.metrics)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
