"""The rollout figures of bench/RESULTS.md (fast sampling): every decoder and answer-length setting
measured in one process on one loaded model, beside the batch-1 sequential baseline.

Rows: batch-1 sequential (transformers' generate, RL4VLM's loop); batched with ``generate`` and with the
static decoder at each env count, answers forced to ``ppo.max_new_tokens``; the same with answers that end
after 30-80 tokens (fixed-seed draw), where the static decoder drops finished rows; one update pass.
Optionally (``--hf-compile``) transformers' own static cache + ``torch.compile`` generate, the candidate
the issue compared against, timed the same way on the batched rows.

    python bench/gpu_rollout.py --preset numberline-qwen --shape qwen2-vl-2b --n-envs 32,128 --out DIR
    python bench/gpu_rollout.py --preset numberline-tiny --shape tiny --n-envs 4 --out /tmp/x   # CPU check
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path


def hf_compiled_generate_row(policy, cfg, n_envs: int, repeats: int) -> dict:
    """transformers' ``generate`` with ``cache_implementation="static"`` (which compiles the decode step)
    on the sampling model, prompts of the preset's env, answers forced to ``ppo.max_new_tokens``."""
    import torch

    from vlmppo.benchmark.rollout import make_bench_env
    from vlmppo.benchmark.timing import now
    from vlmppo.models.generation import to_pil
    from vlmppo.models.inputs import build_inputs
    from vlmppo.rl.rollout import prompts_for

    vec = make_bench_env(cfg, n_envs)
    obs, infos = vec.reset()
    batch = build_inputs(policy.loaded, [to_pil(o) for o in obs], prompts_for(vec.adapter, infos))
    batch = batch.to(policy.device)
    model = policy.sampler.model if policy.sampler is not None else policy.loaded.model
    tok, new = policy.loaded.tokenizer, cfg.ppo.max_new_tokens
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=cfg.ppo.temperature,
                  top_k=0, top_p=1.0, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  cache_implementation="static")  # fmt: skip
    times = []
    with torch.no_grad(), policy.autocast():
        for _ in range(repeats + 1):
            start = now(policy.device)
            model.generate(**batch, **kwargs)
            times.append(now(policy.device) - start)
    return {"n_envs": n_envs, "first_call_s": times[0], "generate_s": sum(times[1:]) / repeats,
            "ms_per_position": 1e3 * sum(times[1:]) / repeats / new}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="numberline-qwen")
    ap.add_argument("--shape", default="qwen2-vl-2b")
    ap.add_argument("--n-envs", default="32,128")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--lengths", default="30-80")
    ap.add_argument("--hf-compile", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from vlmppo.benchmark.options import DECODERS, parse_answer_lengths
    from vlmppo.benchmark.report import markdown
    from vlmppo.benchmark.rollout import measure_rollout
    from vlmppo.benchmark.runner import AnswerLengths, BenchResult, _meta, bench_policy
    from vlmppo.benchmark.update import measure_update
    from vlmppo.config import load_config
    from vlmppo.sysinfo import resolve_device

    cfg = load_config(args.preset, None, [f"ppo.max_new_tokens={args.max_new_tokens}"])
    device = resolve_device(cfg)
    cfg, policy = bench_policy(cfg, args.shape, device)
    counts = [int(n) for n in args.n_envs.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    span = parse_answer_lengths(args.lengths)
    plan = [("forced", None, [("generate", 1)] + [(d, n) for d in DECODERS for n in counts]),
            (args.lengths, span, [("generate", counts[-1])] + [(d, n) for d in DECODERS[1:] for n in counts])]  # fmt: skip
    report, summary, baseline = [], {}, None
    recorded: list = []
    for name, lengths, runs in plan:
        policy.forced_lengths = AnswerLengths(cfg.ppo.max_new_tokens, lengths, cfg.run.seed)
        meta = _meta(cfg, args.shape, device, policy, counts, args.repeats, list(DECODERS), lengths)
        # The batch-1 forced-length baseline heads every table (speedups are over it).
        result = BenchResult(meta=meta, rollout=[baseline] if name != "forced" else [])
        for decoder, n in runs:
            policy.decoder = decoder
            t0 = time.time()
            keep = recorded if (name, decoder, n) == ("forced", "static", counts[-1]) else None
            try:
                row = measure_rollout(policy, cfg, n, repeats=args.repeats, keep=keep, gpu_name=meta["gpu"])
            except Exception:  # one failing row must not cost the lease's other figures
                traceback.print_exc()
                continue
            result.rollout.append(row)
            print(f"[{name}] {decoder:8s} n={n:4d} env-steps/s {row.env_steps_per_s:8.2f} "
                  f"ms/position {row.ms_per_position:6.1f} score {row.score_s:.2f}s vision {row.vision_s:.3f}s "
                  f"peak {row.peak_gib} ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
        if name == "forced":
            baseline = result.baseline
            if recorded:
                result.update = measure_update(policy, cfg, recorded, repeats=1)
        summary[name] = result.to_dict()
        report.append(f"## answers: {name}\n\n" + markdown(result))
        write(args.out, summary, report)  # after each group: a lease cut short keeps what it measured
    if args.hf_compile:
        policy.forced_lengths = None
        try:
            summary["hf_static_compile"] = [
                hf_compiled_generate_row(policy, cfg, n, args.repeats) for n in counts
            ]
        except Exception as exc:  # a candidate that does not run here is a result too
            summary["hf_static_compile"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        report.append(
            "## transformers static cache + compile\n\n" + json.dumps(summary["hf_static_compile"], indent=1)
        )
        print(report[-1], flush=True)
    write(args.out, summary, report)
    print("\n\n".join(report))


def write(out: Path, summary: dict, report: list[str]) -> None:
    (out / "rollout.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "rollout.md").write_text("\n\n".join(report))


if __name__ == "__main__":
    main()
