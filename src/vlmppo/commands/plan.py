"""`vlmppo plan`: the settings that fit a GPU size (``vlmppo.planner``), as one line of overrides to paste."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer

from vlmppo.commands._common import ConfigOpt, OverridesArg, PresetOpt, examples, resolve_config

plan_epilog = examples(
    "vlmppo plan --preset numberline-llava --gpu-mem 24",
    "vlmppo plan --preset minigrid-doorkey-qwen --gpu-mem 16 --margin 0.15",
    "vlmppo plan --preset numberline-qwen --gpu-mem 80 --gpus 2 model.lora.r=64",
)


def plan(
    overrides: OverridesArg = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    gpu_mem: Annotated[
        float, typer.Option("--gpu-mem", help="Memory of one GPU in GiB (a '24 GB' card: 24).")
    ] = 24.0,
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs per run (each holds the whole model).")] = 1,
    margin: Annotated[
        float,
        typer.Option("--margin", help="Fraction of the card left free (fragmentation, other processes)."),
    ] = 0.1,
    max_envs: Annotated[int, typer.Option("--max-envs", help="Largest env.n_envs to propose.")] = 128,
    quantization: Annotated[
        str, typer.Option("--quantization", help="auto (try none and 4bit), none, 4bit or 8bit.")
    ] = "auto",
):
    """Propose env.n_envs, micro-batch, gradient checkpointing, merged sampling and quantisation that fit a GPU."""
    from vlmppo.errors import ConfigError

    cfg = resolve_config(preset, config, overrides)
    problems = []
    if not gpu_mem > 0:
        problems.append(f"--gpu-mem {gpu_mem:g} is not a positive number of GiB")
    if gpus < 1:
        problems.append(f"--gpus {gpus} is not a positive number of GPUs")
    if not 0 <= margin < 1:
        problems.append(f"--margin {margin:g} is not a fraction in [0, 1)")
    if max_envs < 1:
        problems.append(f"--max-envs {max_envs} is not a positive number of envs")
    if quantization not in ("auto", "none", "4bit", "8bit"):
        problems.append(f"--quantization {quantization!r} is not one of auto, none, 4bit, 8bit")
    if quantization not in ("auto", "none") and cfg.model.lora is None:
        problems.append(f"--quantization {quantization} needs LoRA (model.lora is null)")
    if problems:
        raise ConfigError("; ".join(problems) + ".", hint="See `vlmppo plan --help`.")
    from vlmppo.planner import plan_for_gpu

    result = plan_for_gpu(
        cfg, gpu_mem, gpus=gpus, margin=margin, max_envs=max_envs, quantization=quantization
    )
    if result is None:
        raise ConfigError(
            f"No memory estimate for {cfg.model.path}: its config is not available offline.",
            hint="Point model.path at a local model folder (or a model the Hugging Face cache holds).",
        )
    print_plan(cfg, result, preset, config, overrides or [])


def print_plan(cfg, result, preset, config_file, overrides: list[str]) -> None:
    from rich.table import Table

    from vlmppo.console import console
    from vlmppo.errors import ConfigError

    chosen, smallest = result.chosen, result.smallest
    card = f"{result.gpus} x " if result.gpus > 1 else ""
    if chosen is None:
        s = smallest.settings
        raise ConfigError(
            f"Nothing fits in {card}{result.gpu_mem_gb:g} GiB with a {result.margin:.0%} margin "
            f"({result.budget_gb:.1f} GiB usable) for {cfg.model.path}: of {result.tried} settings tried, the "
            f"smallest (quantization {s['model.quantization'] or 'none'}, gradient checkpointing "
            f"{'on' if s['model.gradient_checkpointing'] else 'off'}, env.n_envs={s['env.n_envs']}, "
            f"ppo.micro_batch_size={s['ppo.micro_batch_size']}) needs ~{smallest.peak_gb:.1f} GiB per GPU "
            f"(PPO {smallest.ppo_peak_gb:.1f}, SFT {smallest.sft_peak_gb:.1f}).",
            hint="Use a larger GPU (or more of them for SFT), a smaller model, a smaller model.lora.r, fewer "
            "image tokens (model.max_pixels), a shorter ppo.max_new_tokens, or a smaller --margin.",
        )
    s = chosen.settings
    table = Table(
        title=f"plan: {card}{result.gpu_mem_gb:g} GiB per GPU", show_header=False, title_justify="left"
    )
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = [
        ("model", f"{cfg.model.path} ({cfg.model.family})"),
        ("quantization", s["model.quantization"] or "none (bf16 base)"),
        ("gradient checkpointing", "on" if s["model.gradient_checkpointing"] else "off"),
        ("merged sampling", "on" if s.get("ppo.merged_sampling") else "off"),
        ("env.n_envs", str(s["env.n_envs"])),
        ("ppo micro-batch / minibatch", f"{s['ppo.micro_batch_size']} / {s['ppo.minibatch_size']}"),
        ("est. PPO peak per GPU", f"{chosen.ppo_peak_gb:.1f} GiB of {result.budget_gb:.1f} usable"),
        ("est. SFT peak per GPU", f"{chosen.sft_peak_gb:.1f} GiB"),
        ("expected env-steps/s", f"~{chosen.env_steps_per_s:.1f} (H200-class; see note)"),
        ("settings tried", str(result.tried)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    if not chosen.overrides:
        console.print("The config's own settings are the plan's: nothing to change.", markup=False)
        return
    source = f"--preset {shlex.quote(preset)} " if preset else ""
    source += f"--config {shlex.quote(str(config_file))} " if config_file else ""
    line = " ".join(shlex.quote(o) for o in [*overrides, *chosen.overrides])
    console.print("paste (the same overrides work for sft, eval and pipeline):", markup=False)
    console.print(f"vlmppo ppo {source}{line}", markup=False, highlight=False, soft_wrap=True)
