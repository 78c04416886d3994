"""4-bit bases against bf16 LoRA on a 24 GB card (bench/RESULTS.md, issue 24): peak memory, the dry-run's
estimate and speed of SFT and PPO, per model shape, each stage in its own process on one GPU.

Cases (random weights built from the released configs, `vlmppo.models.shapes`; nothing is downloaded):
* Qwen2-VL-2B shape on numberline-qwen: 4bit under a 24 GiB cap; bf16 LoRA sampling unmerged and (the GPU
  default) from a merged copy, on the whole card, so their peak shows what they would need;
* LLaVA-1.6-Mistral-7B shape with the ``numberline-llava-4bit`` preset's own settings (envs, micro-batch,
  checkpointing, answer length, SFT batch), so the run checks that preset: 4bit under the cap; the same
  settings in bf16 LoRA (unmerged) on the whole card.
A 4bit PPO whose static decoder fails is retried with ``model.decoder=generate`` (the row says so).

Each stage (one row) runs in a fresh Python process (``--stage N:STAGE``): a peak then holds nothing an
earlier stage left allocated (``start GiB`` shows what was allocated when the stage began), and a stage that
runs out of memory, crashes or overruns ``STAGE_TIMEOUT_S`` gives its row a status while the others run.
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
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CAP_GIB = 24.0
COMMON = ["ppo.init_from=null", "ppo.n_epochs=1", "run.device=cuda"]
SHAPE_SETTINGS = {  # 2B: chosen with the dry-run (4bit fits 24 GiB, bf16 LoRA with merged sampling does not)
    "qwen2-vl-2b": ("numberline-qwen", ["model.gradient_checkpointing=false", "env.n_envs=16",
                                        "ppo.micro_batch_size=8", "ppo.minibatch_size=16", "sft.batch_size=6",
                                        "ppo.max_new_tokens=128"]),
    "llava-next-mistral-7b": ("numberline-llava-4bit", []),  # the 24 GB preset's settings, as they are
}  # fmt: skip
CASES = [  # (case, shape, extra overrides, capped, stages), in order of value: the budget may cut the tail
    ("2b 4bit", "qwen2-vl-2b", ["model.quantization=4bit"], True, ("ppo", "sft")),
    ("2b bf16 LoRA", "qwen2-vl-2b", ["ppo.merged_sampling=false"], False, ("ppo", "sft")),
    ("7b 4bit", "llava-next-mistral-7b", ["model.quantization=4bit"], True, ("ppo", "sft")),
    ("7b bf16 LoRA", "llava-next-mistral-7b", ["model.quantization=null", "ppo.merged_sampling=false"], False,
     ("ppo", "sft")),
    ("2b bf16 LoRA, merged sampling", "qwen2-vl-2b", ["ppo.merged_sampling=true"], False, ("ppo",)),
]  # fmt: skip
REPORTED_SETTINGS = ("env.n_envs", "ppo.micro_batch_size", "ppo.max_new_tokens", "sft.batch_size",
                     "model.gradient_checkpointing")  # fmt: skip
DRY_FAMILY = {"qwen2-vl-2b": "qwen2-vl", "llava-next-mistral-7b": "llava-next"}
DRY = ["run.device=cpu", "env.n_envs=2", "ppo.micro_batch_size=2", "ppo.minibatch_size=2",
       "ppo.max_new_tokens=8", "sft.batch_size=2"]  # fmt: skip
STAGE_GRACE_S = 90  # a stage started just before the deadline may run this long past it


def case_config(shape: str, extra: list[str], dry: bool):
    """The config of one case: the shape's preset and settings, the built model, the case's overrides."""
    from vlmppo.config import load_config

    preset, settings = SHAPE_SETTINGS[shape]
    if dry:
        family = DRY_FAMILY[shape]
        extra = [o for o in extra if not o.startswith("model.quantization")]  # bitsandbytes needs CUDA
        model = [f"model.path=tiny:{family}", f"model.family={family}", "model.quantization=null"]
        return load_config(preset, overrides=[*COMMON, *settings, *model, *extra, *DRY])
    from vlmppo.models.shapes import get_shape, shape_model_path

    built = get_shape(shape)
    model = [f"model.path={shape_model_path(built, device='cuda')}", f"model.family={built.family}"]
    return load_config(preset, overrides=[*COMMON, *settings, *model, *extra])


def shape_settings(dry: bool) -> dict:
    """What each shape ran with (its preset, overrides and the resulting knobs), for the report's header."""
    from vlmppo.config import load_config

    report = {}
    for shape, (preset, settings) in SHAPE_SETTINGS.items():
        cfg = load_config(preset, overrides=[*COMMON, *settings, *(DRY if dry else [])])
        knobs = {}
        for key in REPORTED_SETTINGS:
            section, field = key.split(".")
            knobs[key] = getattr(getattr(cfg, section), field)
        report[shape] = {"preset": preset, "overrides": settings, **knobs}
    return report | {"common": COMMON, "dry": dry}


def write_report(out: Path, meta: dict, rows: list[dict]) -> None:
    from vlmppo.io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "quant.json", {"meta": meta, "rows": rows})
    lines = [
        f"# 4-bit bases vs bf16 LoRA under a {CAP_GIB:g} GiB cap ({meta.get('gpu', '?')}, {meta['date_utc']})",
        "",
        f"One process per stage. versions: {json.dumps(meta.get('versions', {}))}; "
        f"settings: {json.dumps(meta['settings'])}",
        "",
        "| case | stage | cap GiB | status | start GiB | peak GiB | estimate GiB | estimate / peak | samples/s | "
        "env-steps/s | tokens/sample | decoder | s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x, digits=2):
        return "" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)

    for r in rows:
        lines.append(
            f"| {r['case']} | {r['stage']} | {f(r['cap_gib'], 0) or 'none'} | {r['status']} | "
            f"{f(r.get('start_gib'))} | {f(r['peak_gib'])} | {f(r['estimate_gib'])} | {f(r['estimate_ratio'])} | "
            f"{f(r['samples_per_s'])} | {f(r['env_steps_per_s'])} | {f(r['tokens_per_sample'], 0)} | "
            f"{r['decoder'] or ''} | {r['seconds']} | {r['note']} |"
        )
    atomic_write_text(out / "quant.md", "\n".join(lines) + "\n")


def measure_one(number: int, stage: str, dry: bool, row_file: Path) -> None:
    """The child process: measure one stage of case ``number`` and write its row (and what ran it)."""
    import torch

    from vlmppo.benchmark.fit import measure_stage
    from vlmppo.io import atomic_write_json
    from vlmppo.sysinfo import package_versions

    case, shape, extra, capped, _ = CASES[number - 1]
    cfg = case_config(shape, extra, dry)
    if cfg.model.quantization and os.environ.get("QUANT_DECODER"):  # e.g. generate, if static fails
        cfg = cfg.model_copy(
            update={"model": cfg.model.model_copy(update={"decoder": os.environ["QUANT_DECODER"]})}
        )
    cap = CAP_GIB if capped and not dry else None
    with tempfile.TemporaryDirectory(prefix="gpu-quant-frames-") as frames:  # SFT images
        row = measure_stage(case, stage, cfg, cfg.run.device, cap, Path(frames))
        if row.status == "error" and stage == "ppo" and cfg.model.quantization and row.decoder != "generate":
            first = row.note
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"decoder": "generate"})})
            row = measure_stage(case, stage, cfg, cfg.run.device, cap, Path(frames))
            row.note = f"static decoder failed ({first}); generate: {row.note}"
    if dry and "model.quantization=4bit" in extra:
        row.note = f"DRY: unquantised on the CPU. {row.note}"
    versions = {k: v for k, v in package_versions().items() if v != "not installed"}
    meta = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() and not dry else "cpu (DRY)",
        "versions": versions | {"bitsandbytes": _version("bitsandbytes")},
    }
    atomic_write_json(row_file, {"row": row.to_dict(), "meta": meta})


def stage_in_child(number: int, stage: str, folder: Path, timeout_s: float) -> tuple[dict, dict]:
    """Run one stage in a fresh process; its row, or one saying how the process ended without one."""
    case, _, _, capped, _ = CASES[number - 1]
    row_file = folder / f"{number}-{stage}.json"
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--stage",
        f"{number}:{stage}",
        "--row-file",
        str(row_file),
    ]
    started = time.perf_counter()
    # its own session: a timeout ends the stage and whatever it started (env workers), nothing else
    child = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = child.communicate(timeout=timeout_s)
        ended = f"exited with status {child.returncode}"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it may have ended just now
            os.killpg(child.pid, signal.SIGKILL)
        output, _ = child.communicate()
        ended = f"killed after the stage's {timeout_s:.0f} s"
    print(output, end="", flush=True)
    if row_file.exists():
        report = json.loads(row_file.read_text())
        return report["row"], report["meta"]
    lines = [line for line in output.splitlines() if line.strip()]
    dry = os.environ.get("DRY") == "1"
    return {
        "case": case, "stage": stage, "status": "timeout" if "killed" in ended else "crash",
        "cap_gib": CAP_GIB if capped and not dry else None, "start_gib": None, "peak_gib": None,
        "estimate_gib": None, "estimate_ratio": None, "samples_per_s": None, "env_steps_per_s": None,
        "tokens_per_sample": None, "decoder": None, "seconds": round(time.perf_counter() - started, 1),
        "note": f"the stage's process {ended}" + (f": {lines[-1][:200]}" if lines else ""),
    }, {}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/out")))
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("BUDGET_S", 450)))
    parser.add_argument(
        "--cases", default=os.environ.get("CASES", ""), help="Comma-separated case numbers (1-5)."
    )
    parser.add_argument("--stage", help="Internal: measure one stage, N:ppo or N:sft, in this process.")
    parser.add_argument("--row-file", type=Path, help="Internal: where --stage writes its row.")
    args = parser.parse_args()
    dry = os.environ.get("DRY") == "1"
    if args.stage:
        number, stage = args.stage.split(":")
        measure_one(int(number), stage, dry, args.row_file)
        return
    started = time.perf_counter()
    # BENCH_DEADLINE (epoch seconds, set by gpu_quant.sh at its start) or --budget-s from now
    deadline = float(os.environ.get("BENCH_DEADLINE") or time.time() + args.budget_s)
    stage_limit = float(os.environ.get("STAGE_TIMEOUT_S") or 0)
    from vlmppo.sysinfo import git_sha

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "git_sha": git_sha(),
            "settings": shape_settings(dry)}  # fmt: skip
    chosen = {int(c) for c in args.cases.split(",") if c.strip()} or set(range(1, len(CASES) + 1))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu-quant-rows-") as folder:
        for number, (case, _, _, _, stages) in enumerate(CASES, start=1):
            if number not in chosen:
                continue
            for stage in stages:
                if time.time() > deadline:
                    print(f"skip {case} {stage}: past the time budget", flush=True)
                    continue
                timeout_s = stage_limit or max(60.0, deadline + STAGE_GRACE_S - time.time())
                row, child_meta = stage_in_child(number, stage, Path(folder), timeout_s)
                meta.update(child_meta)
                rows.append(row)
                print(json.dumps(row), flush=True)
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
