"""The benchmark's tables as rows of text: `vlmppo bench` draws them on the terminal, ``write_report`` writes
them as markdown beside the JSON of every figure (same rows, same order)."""

from __future__ import annotations

import json
from pathlib import Path

from vlmppo.benchmark.runner import BenchResult

ROLLOUT_COLUMNS = (
    "mode",
    "decoder",
    "n_envs",
    "env-steps/s",
    "gen tokens/s",
    "speedup",
    "generate s",
    "ms/position",
    "floor ms",
    "score s",
    "vision s",
    "inputs s",
    "host+env s",
    "peak GiB",
)
UPDATE_COLUMNS = (
    "micro-batch",
    "minibatch",
    "samples/s",
    "tokens/s",
    "padded tokens/s",
    "collate s",
    "peak GiB",
)


def _gib(value: float | None) -> str:
    return "n/a (CPU)" if value is None else f"{value:.1f}"


def _lengths(meta: dict) -> str:
    span = meta.get("answer_lengths", "forced")
    if span == "forced":
        return f"every answer forced to {meta['max_new_tokens']} new tokens"
    return f"answers end after {span} tokens (uniform, fixed seed; at most {meta['max_new_tokens']})"


def training(result: BenchResult) -> str:
    r = result.meta["lora_r"]
    return "full fine-tuning" if r is None else f"LoRA r={r}"


def rollout_rows(result: BenchResult) -> list[list[str]]:
    base = result.baseline.env_steps_per_s
    return [
        [
            r.mode,
            r.decoder,
            str(r.n_envs),
            f"{r.env_steps_per_s:.2f}",
            f"{r.gen_tokens_per_s:,.0f}",
            f"{r.env_steps_per_s / base:.1f}x",
            f"{r.generate_s:.2f}",
            f"{r.ms_per_position:.1f}",
            "n/a" if r.floor_ms is None else f"{r.floor_ms:.2f} ({r.floor_ms / r.ms_per_position:.0%})",
            f"{r.score_s:.2f}",
            "n/a" if r.vision_s is None else f"{r.vision_s:.3f}",
            f"{r.inputs_s:.2f}",
            f"{r.host_s:.2f}",
            _gib(r.peak_gib),
        ]
        for r in result.rollout
    ]


def update_row(result: BenchResult) -> list[str]:
    u = result.update
    return [
        str(u.micro_batch_size),
        str(u.minibatch_size),
        f"{u.samples_per_s:.2f}",
        f"{u.tokens_per_s:,.0f}",
        f"{u.padded_tokens / u.seconds:,.0f}",
        f"{u.collate_s:.2f}",
        _gib(u.peak_gib),
    ]


def setup_lines(result: BenchResult) -> list[str]:
    """What was measured, in words: model, sequence lengths, what the figures include."""
    m, base = result.meta, result.baseline
    where = m["gpu"] or "CPU"
    return [
        f"{m['env']} | model {m['model_path'] if m['shape'] == 'preset' else m['shape']} ({m['family']}, {m['parameters'] / 1e6:,.1f}M parameters, "
        f"{m['dtype']}, autocast {m.get('mixed_precision', 'no')}, {m['attn_implementation']}, LoRA r={m['lora_r']}) | {where} | {m['date_utc']}",
        f"Prompt {base.prompt_tokens:.0f} tokens ({base.image_tokens:.0f} image tokens); {_lengths(m)} "
        f"(random weights: no natural stop); {m['repeats']} timed repeats after 1 warm-up.",
        "Rollout = the PPO loop's rollout_step (generate + teacher-forced scoring + parsing) + env step; "
        "speedup is env-steps/s over the batch-1 sequential baseline of this run. ms/position: generate "
        "time per decoded position of the longest answer (prefill included); floor ms: the bytes a decode "
        "step must read (weights + KV cache) over the card's bandwidth, and the share of ms/position it is.",
    ]


def markdown(result: BenchResult) -> str:
    def table(columns, rows) -> list[str]:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return lines + ["| " + " | ".join(r) + " |" for r in rows]

    lines = [*(f"{line}  " for line in setup_lines(result)), "", "Rollout:", ""]
    lines += table(ROLLOUT_COLUMNS, rollout_rows(result))
    if result.update is not None:
        lines += [
            "",
            f"Update (teacher-forced forward + backward over micro-batches, {training(result)}):",
            "",
        ]
        lines += table(UPDATE_COLUMNS, [update_row(result)])
    return "\n".join(lines) + "\n"


def write_report(result: BenchResult, out: Path) -> tuple[Path, Path]:
    """Write ``out`` with suffix .json (every figure and the setup) and .md (the tables)."""
    from vlmppo.io import atomic_write_text

    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    atomic_write_text(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    atomic_write_text(md_path, markdown(result))
    return json_path, md_path
