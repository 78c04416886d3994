"""4-bit bases against bf16 LoRA on a 24 GB card (bench/RESULTS.md, issue 24): peak memory, the dry-run's
estimate and speed of SFT and PPO, per model shape, in one process on one GPU.

Cases (random weights built from the released configs, `vlmppo.models.shapes`; nothing is downloaded):
* Qwen2-VL-2B shape on numberline-qwen: 4bit under a 24 GiB cap; bf16 LoRA sampling unmerged and (the GPU
  default) from a merged copy, on the whole card, so their peak shows what they would need;
* LLaVA-1.6-Mistral-7B shape on numberline-llava: 4bit under the cap; bf16 LoRA (unmerged) on the whole card.
A 4bit PPO whose static decoder fails is retried with ``model.decoder=generate`` (the row says so).

Each stage is ``vlmppo.benchmark.fit.measure_stage``: SFT = one warm-up + 2 optimizer steps of
``sft.batch_size`` samples (the prompt + a 256-token answer); PPO = one warm-up + 1 timed rollout step of
``env.n_envs`` envs (answers forced to ``ppo.max_new_tokens``) + one update pass over its samples. Rows are
written to ``OUT/quant.json`` and ``OUT/quant.md`` after each stage, so a cut-off run keeps what it measured;
stages that would start after ``--budget-s`` (or ``$BENCH_DEADLINE``) are skipped.

    python bench/gpu_quant.py --out DIR            # on the GPU machine (bench/gpu_quant.sh)
    DRY=1 python bench/gpu_quant.py --out DIR      # the same code on the CPU: tiny models, no quantisation
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

CAP_GIB = 24.0
COMMON = ["ppo.max_new_tokens=128", "ppo.init_from=null", "ppo.n_epochs=1", "run.device=cuda"]
SHAPE_SETTINGS = {  # chosen with the dry-run: 4bit fits 24 GiB, bf16 LoRA with merged sampling does not
    "qwen2-vl-2b": ("numberline-qwen", ["model.gradient_checkpointing=false", "env.n_envs=16",
                                        "ppo.micro_batch_size=8", "ppo.minibatch_size=16", "sft.batch_size=6"]),
    "llava-next-mistral-7b": ("numberline-llava", ["model.gradient_checkpointing=true", "env.n_envs=8",
                                                   "ppo.micro_batch_size=8", "ppo.minibatch_size=8",
                                                   "sft.batch_size=8"]),
}  # fmt: skip
CASES = [  # (case, shape, extra overrides, capped, stages), in order of value: the budget may cut the tail
    ("2b 4bit", "qwen2-vl-2b", ["model.quantization=4bit"], True, ("ppo", "sft")),
    ("2b bf16 LoRA", "qwen2-vl-2b", ["ppo.merged_sampling=false"], False, ("ppo", "sft")),
    ("7b 4bit", "llava-next-mistral-7b", ["model.quantization=4bit"], True, ("ppo", "sft")),
    ("7b bf16 LoRA", "llava-next-mistral-7b", ["ppo.merged_sampling=false"], False, ("ppo", "sft")),
    ("2b bf16 LoRA, merged sampling", "qwen2-vl-2b", ["ppo.merged_sampling=true"], False, ("ppo",)),
]
DRY_FAMILY = {"qwen2-vl-2b": "qwen2-vl", "llava-next-mistral-7b": "llava-next"}
DRY = ["run.device=cpu", "env.n_envs=2", "ppo.micro_batch_size=2", "ppo.minibatch_size=2",
       "ppo.max_new_tokens=8", "sft.batch_size=2"]  # fmt: skip


def case_config(shape: str, extra: list[str], dry: bool, model_paths: dict):
    """The config of one case: the shape's preset and settings, the built model, the case's overrides."""
    from vlmppo.config import load_config

    preset, settings = SHAPE_SETTINGS[shape]
    if dry:
        family = DRY_FAMILY[shape]
        extra = [o for o in extra if not o.startswith("model.quantization")]  # bitsandbytes needs CUDA
        model = [f"model.path=tiny:{family}", f"model.family={family}"]
        return load_config(preset, overrides=[*COMMON, *settings, *model, *extra, *DRY])
    if shape not in model_paths:
        from vlmppo.models.shapes import get_shape, shape_model_path

        model_paths[shape] = str(shape_model_path(get_shape(shape), device="cuda"))
    model = [f"model.path={model_paths[shape]}", f"model.family={get_family_of(shape)}"]
    return load_config(preset, overrides=[*COMMON, *settings, *model, *extra])


def get_family_of(shape: str) -> str:
    from vlmppo.models.shapes import get_shape

    return get_shape(shape).family


def write_report(out: Path, meta: dict, rows: list) -> None:
    from vlmppo.io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "quant.json", {"meta": meta, "rows": [r.to_dict() for r in rows]})
    lines = [
        f"# 4-bit bases vs bf16 LoRA under a {CAP_GIB:g} GiB cap ({meta['gpu']}, {meta['date_utc']})",
        "",
        f"versions: {json.dumps(meta['versions'])}; settings: {json.dumps(meta['settings'])}",
        "",
        "| case | stage | cap GiB | status | peak GiB | estimate GiB | estimate / peak | samples/s | env-steps/s | "
        "tokens/sample | decoder | s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x, digits=2):
        return "" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)

    for r in rows:
        lines.append(
            f"| {r.case} | {r.stage} | {f(r.cap_gib, 0) or 'none'} | {r.status} | {f(r.peak_gib)} | "
            f"{f(r.estimate_gib)} | {f(r.estimate_ratio)} | {f(r.samples_per_s)} | {f(r.env_steps_per_s)} | "
            f"{f(r.tokens_per_sample, 0)} | {r.decoder or ''} | {r.seconds} | {r.note} |"
        )
    atomic_write_text(out / "quant.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/out")))
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("BUDGET_S", 450)))
    parser.add_argument(
        "--cases", default=os.environ.get("CASES", ""), help="Comma-separated case numbers (1-5)."
    )
    args = parser.parse_args()
    started = time.perf_counter()
    # BENCH_DEADLINE (epoch seconds, set by gpu_quant.sh at its start) or --budget-s from now
    deadline = float(os.environ.get("BENCH_DEADLINE") or time.time() + args.budget_s)
    dry = os.environ.get("DRY") == "1"
    import torch

    from vlmppo.benchmark.fit import measure_stage
    from vlmppo.sysinfo import git_sha, package_versions

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() and not dry else "cpu (DRY)",
        "versions": {**{k: v for k, v in package_versions().items() if v != "not installed"},
                     "bitsandbytes": _version("bitsandbytes")},
        "git_sha": git_sha(),
        "settings": {k: v[1] for k, v in SHAPE_SETTINGS.items()} | {"common": COMMON, "dry": dry},
    }  # fmt: skip
    chosen = {int(c) for c in args.cases.split(",") if c.strip()} or set(range(1, len(CASES) + 1))
    rows, model_paths = [], {}
    frames = Path(tempfile.mkdtemp(prefix="gpu-quant-frames-"))  # SFT images; $OUT brings back few files
    for number, (case, shape, extra, capped, stages) in enumerate(CASES, start=1):
        if number not in chosen:
            continue
        for stage in stages:
            if time.time() > deadline:
                print(f"skip {case} {stage}: past the time budget", flush=True)
                continue
            cfg = case_config(shape, extra, dry, model_paths)
            if cfg.model.quantization and os.environ.get("QUANT_DECODER"):  # e.g. generate, if static fails
                cfg = cfg.model_copy(
                    update={"model": cfg.model.model_copy(update={"decoder": os.environ["QUANT_DECODER"]})}
                )
            device = cfg.run.device
            cap = CAP_GIB if capped and not dry else None
            row = measure_stage(case, stage, cfg, device, cap, frames)
            if dry and "model.quantization=4bit" in extra:
                row.note = f"DRY: unquantised on the CPU. {row.note}"
            if (
                row.status == "error"
                and stage == "ppo"
                and cfg.model.quantization
                and row.decoder != "generate"
            ):
                first = row.note
                cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"decoder": "generate"})})
                row = measure_stage(case, stage, cfg, device, cap, frames)
                row.note = f"static decoder failed ({first}); generate: {row.note}"
            rows.append(row)
            print(json.dumps(row.to_dict()), flush=True)
            write_report(args.out, meta, rows)
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
