"""The GPU cost of one PPO rollout step, per part, with issue 18's step-side changes off and on (one process).

One loaded policy (the Qwen2-VL-2B shape, random bf16 weights, the bench's LoRA and merged sampling copy, the
static decoder), NumberLine envs, ``rollout_step`` + env step timed as ``measure_rollout`` times them. For each
answer-length setting (forced to ``--max-new-tokens``; ``--lengths`` drawn per row) and env count, the code
variants, cumulative:

* ``before``: every frame through the vision tower, the decoder's own prefill (merged copy), scoring over
  prompt + answer (the code before this branch);
* ``+vision cache``: image features once per distinct frame while the weights stay (``models/vision_cache.py``;
  cleared before each measurement, so its warm-up step fills it, as a rollout's first step does);
* ``+fused norms``: decode steps with one kernel per RMSNorm (``models/decode_fusions.py``);
* ``+fused rotary`` (= the default): and the rotary embedding of the new token as one matmul per tensor;
* ``+shared prefill (inexact)``: one prompt forward through the trained model for the decoder and the scoring
  pass, which runs the answer tokens only (``ActorCritic.shared_prefill``: off in training, since under bf16
  its log-probs are not the update's; ``bench/gpu_scoring_gap.py``).

Also: ms per decode step at each env count (the step replayed 64 times from a loaded prompt), and the
differences the changes make to what is computed, on one 128-env step: cached against uncached image features
and scoring over the prefill's cache against the full forward (max |difference| of token log-probs/values).

    python bench/gpu_rollout_fast.py --out DIR                       # the GPU machine (bench/gpu_rollout_fast.sh)
    python bench/gpu_rollout_fast.py --shape tiny --preset numberline-tiny --device cpu --n-envs 4 \\
        --max-new-tokens 8 --lengths 3-6 --out DIR                   # the same code paths on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
import traceback
from pathlib import Path

VARIANTS = ("before", "+vision cache", "+fused norms", "+fused rotary", "+shared prefill (inexact)")


@contextlib.contextmanager
def variant(policy, name: str):
    """The step-side switches of ``name`` (see the module docstring), put back afterwards."""
    from vlmppo.models import vision_cache

    level = VARIANTS.index(name)
    vision_cache.set_max_bytes(vision_cache.DEFAULT_MAX_BYTES if level >= 1 else 0)
    vision_cache.clear_feature_cache(policy.loaded.model)
    decoder = sampling_decoder(policy)
    decoder.fuse_norms, decoder.fuse_rotary = level >= 2, level >= 3
    policy.shared_prefill = level >= 4
    try:
        yield
    finally:
        vision_cache.set_max_bytes(vision_cache.DEFAULT_MAX_BYTES)
        decoder.fuse_norms = decoder.fuse_rotary = True
        policy.shared_prefill = False


def sampling_decoder(policy):
    from vlmppo.models.generation import static_decoder_for

    return static_decoder_for(policy.sampler.model if policy.sampler is not None else policy.loaded.model)


def decode_step_ms(policy, steps: int = 64) -> float | None:
    """Milliseconds of one decode step at the decoder's current batch (its last call's rows, all active):
    the captured step replayed (or run eagerly off a GPU) ``steps`` times from just after the prompt."""
    import torch

    from vlmppo.benchmark.timing import now
    from vlmppo.models.static_decode import bucket_sizes, pick_bucket

    decoder = sampling_decoder(policy)
    buf = decoder.buffers
    if buf is None or decoder.last_call is None:
        return None
    spec, rows, prompt_len, graph_key = decoder.last_call
    rows = pick_bucket(rows, bucket_sizes(buf.rows))
    steps = min(steps, buf.max_new - 2)
    buf.position.fill_(prompt_len)
    buf.step.fill_(1)
    buf.finished[:rows] = False
    graph = decoder.graphs.get((*graph_key, rows)) if graph_key is not None else None
    start = now(policy.device)
    with torch.no_grad(), policy.autocast():
        for _ in range(steps):
            if graph is not None:
                graph.replay()
            else:
                decoder._decode_step(rows, spec, decoder._suppressed(spec))
    return 1e3 * (now(policy.device) - start) / steps


def differences(policy, cfg, n_envs: int) -> dict:
    """What the changes alter, on one step: max |Δ| of image features (cache vs none) and of the scoring
    pass's log-probs and values (over the prefill's cache vs prompt + answer in one forward)."""
    import torch

    from vlmppo.benchmark.rollout import make_bench_env
    from vlmppo.models import vision_cache
    from vlmppo.models.prompt_embeds import backbone_of
    from vlmppo.rl.rollout import prompts_for

    vec = make_bench_env(cfg, n_envs)
    obs, infos = vec.reset()
    vec.close()
    policy.shared_prefill = True  # to compare its scoring with the full forward's
    with torch.no_grad():
        sampled = policy.sample(obs, prompts_for(vec.adapter, infos), temperature=cfg.ppo.temperature,
                                max_new_tokens=cfg.ppo.max_new_tokens)  # fmt: skip
    policy.shared_prefill = False
    with torch.no_grad():
        logp, values = policy.score(sampled, temperature=cfg.ppo.temperature)
        full_logp, full_values = policy.score(dataclasses.replace(sampled, prefill=None),
                                              temperature=cfg.ppo.temperature)  # fmt: skip
        backbone = backbone_of(policy.loaded.model)
        extra = {
            k: v for k, v in sampled.extra.items() if k in ("pixel_values", "image_grid_thw", "image_sizes")
        }
        with policy.autocast():
            cached = vision_cache.image_features(backbone, extra)
            plain = torch.cat(vision_cache.compute_features(backbone, extra["pixel_values"],
                                                            {k: v for k, v in extra.items() if k != "pixel_values"}))  # fmt: skip
        k = min(8, n_envs)  # the update's micro-batch: what one batch size against another changes anyway
        small_logp, _ = policy.score(first_rows(sampled, k), temperature=cfg.ppo.temperature)
    mask = sampled.answer_mask
    cache = vision_cache.cache_of(backbone)
    return {
        **sampling_gaps(policy, cfg, obs, prompts_for(vec.adapter, infos)),
        f"token log-prob max |diff| (full forward: batch {n_envs} vs {k})": float(
            (full_logp[:k] - small_logp)[mask[:k]].abs().max()
        ),
        "n_envs": n_envs,
        "features max |diff| (cached vs uncached)": float((cached.float() - plain.float()).abs().max()),
        "features identical": bool(torch.equal(cached, plain)),
        "token log-prob max |diff| (prefill cache vs full)": float((logp - full_logp)[mask].abs().max()),
        "value max |diff|": float((values - full_values).abs().max()),
        "vision cache hits/misses so far": f"{cache.hits}/{cache.misses}",
    }


def sampling_gaps(policy, cfg, obs, prompts) -> dict:
    """Mean and max |log-prob the decoder drew a token with - the scoring pass's| (answers not forced), decode
    steps with the stock kernels and with the fused ones (the merged copy's bf16 rounding is in both)."""
    import torch

    decoder, gaps = sampling_decoder(policy), {}
    forced, policy.forced_lengths = policy.forced_lengths, None  # forcing changes the distribution sampled
    for fused in (False, True):
        decoder.fuse_norms = decoder.fuse_rotary = fused
        torch.manual_seed(0)
        with torch.no_grad():
            sampled = policy.sample(obs, prompts, temperature=cfg.ppo.temperature,
                                    max_new_tokens=cfg.ppo.max_new_tokens)  # fmt: skip
            logp, _ = policy.score(sampled, temperature=cfg.ppo.temperature)
        gap = (decoder.last_logp - logp)[sampled.answer_mask].abs()
        label = "fused" if fused else "stock"
        gaps[f"sampling vs scoring |diff| mean/max ({label} decode)"] = f"{gap.mean():.2e}/{gap.max():.2e}"
    policy.forced_lengths = forced
    return gaps


def first_rows(sampled, k: int):
    """The first ``k`` rows of ``sampled`` for the scoring pass over its prompt embeddings (no prefill)."""
    from vlmppo.models.prompt_embeds import PromptEmbeddings

    prompt = sampled.prompt
    positions = prompt.position_ids[:, :k] if prompt.position_ids is not None else None
    deltas = prompt.rope_deltas[:k] if prompt.rope_deltas is not None else None
    extra = (
        {"mm_token_type_ids": sampled.extra["mm_token_type_ids"][:k]}
        if "mm_token_type_ids" in sampled.extra
        else {}
    )
    return dataclasses.replace(
        sampled, sequences=sampled.sequences[:k], attention_mask=sampled.attention_mask[:k],
        answer_mask=sampled.answer_mask[:k], extra=extra, texts=sampled.texts[:k], prefill=None,
        prompt=PromptEmbeddings(prompt.embeds[:k], prompt.attention_mask[:k], positions, deltas),
    )  # fmt: skip


def measure(policy, cfg, n: int, name: str, repeats: int) -> dict:
    from vlmppo.benchmark.rollout import measure_rollout
    from vlmppo.models import vision_cache
    from vlmppo.models.prompt_embeds import backbone_of

    cache = vision_cache.cache_of(backbone_of(policy.loaded.model))
    hits, misses = cache.hits, cache.misses
    with variant(policy, name):
        r = measure_rollout(policy, cfg, n, repeats=repeats)
        decode_ms = decode_step_ms(policy)
    per = 1.0 / r.steps
    return {"code": name, "n_envs": n, "env-steps/s": round(r.env_steps_per_s, 2),
            "step s": round(r.seconds * per, 3), "sampling s": round(r.generate_s * per, 3),
            "of which prefill s": round(r.prefill_s * per, 3), "rest of sample s": round(r.inputs_s * per, 3),
            "score s": round(r.score_s * per, 3), "parse + env s": round(r.host_s * per, 3),
            "ms/decode step": round(decode_ms, 2) if decode_ms is not None else None,
            "vision tower one pass s": round(r.vision_s or 0, 3),
            "frames computed/cached": f"{cache.misses - misses}/{cache.hits - hits}",
            "peak GiB": r.peak_gib}  # fmt: skip


def table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="numberline-qwen")
    ap.add_argument("--shape", default="qwen2-vl-2b")
    ap.add_argument("--device", default=None, help="default: the preset's (cuda when there is one)")
    ap.add_argument("--n-envs", default="32,128")
    ap.add_argument("--repeats", type=int, default=2, help="timed steps per row (after one warm-up step)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--lengths", default="30-80")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch

    from vlmppo.benchmark.options import parse_answer_lengths
    from vlmppo.benchmark.runner import AnswerLengths, script_policy
    from vlmppo.sysinfo import git_sha

    started = time.time()
    cfg, policy, device = script_policy(args.preset, args.shape, max_new_tokens=args.max_new_tokens,
                                        device=args.device)  # fmt: skip
    counts = [int(n) for n in args.n_envs.split(",")]
    names = [v.strip() for v in args.variants.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"git_sha": git_sha(), "device": device, "shape": args.shape, "preset": args.preset,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None, "torch": torch.__version__,
            "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
            "merged_sampling": policy.sampler is not None, "load_s": round(time.time() - started, 1)}  # fmt: skip
    print(json.dumps(meta), flush=True)
    summary: dict = {"meta": meta, "rows": [], "differences": None}
    for label, span in (("forced", None), (args.lengths, parse_answer_lengths(args.lengths))):
        policy.forced_lengths = AnswerLengths(cfg.ppo.max_new_tokens, span, cfg.run.seed)
        for n in counts:
            for name in names:
                try:  # a failing row must not cost the call's other figures
                    row = {"answers": label, **measure(policy, cfg, n, name, args.repeats)}
                except Exception as exc:
                    traceback.print_exc()
                    row = {
                        "answers": label,
                        "code": name,
                        "n_envs": n,
                        "error": f"{type(exc).__name__}: {exc}"[:300],
                    }
                summary["rows"].append(row)
                print(json.dumps(row), flush=True)
                write(args.out, summary)
    policy.forced_lengths = AnswerLengths(cfg.ppo.max_new_tokens, None, cfg.run.seed)
    try:
        summary["differences"] = differences(policy, cfg, counts[-1])
    except Exception as exc:
        traceback.print_exc()
        summary["differences"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    summary["meta"]["wall_s"] = round(time.time() - started, 1)
    write(args.out, summary)
    print(report(summary))


def report(summary: dict) -> str:
    rows = [r for r in summary["rows"] if "error" not in r]
    speedups = []
    for r in rows:
        base = next((b for b in rows if b["code"] == "before" and b["answers"] == r["answers"]
                     and b["n_envs"] == r["n_envs"]), None)  # fmt: skip
        if base is not None and r["code"] != "before":
            speedups.append(f"{r['answers']} n={r['n_envs']} {r['code']}: "
                            f"{r['env-steps/s'] / base['env-steps/s']:.2f}x")  # fmt: skip
    errors = [r for r in summary["rows"] if "error" in r]
    return "\n\n".join([
        "# One rollout step, per part (seconds per step)\n\n" + json.dumps(summary["meta"]),
        table(rows), "speed-ups over before: " + "; ".join(speedups),
        "differences: " + json.dumps(summary["differences"], indent=1),
        ("errors:\n" + table(errors)) if errors else "",
    ])  # fmt: skip


def write(out: Path, summary: dict) -> None:
    (out / "rollout_fast.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "rollout_fast.md").write_text(report(summary) + "\n")


if __name__ == "__main__":
    main()
