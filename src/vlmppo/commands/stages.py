"""The pipeline's stage commands: collect, label, preprocess, sft, ppo, eval, pipeline.

Each resolves the config, prints the plan on --dry-run, and calls one engine function.
"""

from __future__ import annotations

from typing import Annotated

import typer

from vlmppo.commands._common import (
    ConfigOpt,
    DryRunOpt,
    OverridesArg,
    PresetOpt,
    ResumeOpt,
    examples,
    print_dry_run,
    print_preprocess_summary,
    progress_bar,
    resolve_config,
    save_resolved_config,
    stage_not_built,
    summary,
)


def collect(
    overrides: OverridesArg = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    policy: Annotated[str | None, typer.Option(help="expert | random | checkpoint.")] = None,
    ckpt: Annotated[str | None, typer.Option(help="Checkpoint for --policy checkpoint.")] = None,
    episodes: Annotated[int | None, typer.Option(help="Episodes to collect.")] = None,
    dry_run: DryRunOpt = False,
):
    """Run a policy (expert, random or a VLM checkpoint) in the env and record trajectories."""
    extra = [
        f"collect.{k}={v}"
        for k, v in (("policy", policy), ("ckpt", ckpt), ("episodes", episodes))
        if v is not None
    ]
    cfg = resolve_config(preset, config, overrides, extra)
    if dry_run:
        return print_dry_run(cfg, "collect")
    from vlmppo.data.collect import collect as run_collect

    save_resolved_config(cfg)
    with progress_bar("collect: episodes") as advance:
        result = run_collect(cfg, on_episode=advance)
    summary(
        f"collected {result.episodes} episodes, {result.steps} steps "
        f"({result.resumed} kept from an earlier run); success rate {result.success_rate:.1%}",
        result.out_dir,
    )


collect_epilog = examples(
    "vlmppo collect --preset numberline-tiny",
    "vlmppo collect --preset minigrid-doorkey-qwen collect.episodes=500 collect.epsilon=0.2",
    "vlmppo collect --preset numberline-qwen --policy checkpoint --ckpt runs/numberline-qwen/ppo/checkpoints/last",
)


def label(
    overrides: OverridesArg = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    labeller: Annotated[str | None, typer.Option(help="expert | hf | openai.")] = None,
    mode: Annotated[str | None, typer.Option(help="action (thoughts + action) | score (rate 0-10).")] = None,
    dry_run: DryRunOpt = False,
):
    """Have a labeller write reasoning and actions (or scores) for the collected steps."""
    extra = [f"label.{k}={v}" for k, v in (("labeller", labeller), ("mode", mode)) if v is not None]
    cfg = resolve_config(preset, config, overrides, extra)
    if dry_run:
        return print_dry_run(cfg, "label")
    from vlmppo.data.label import label as run_label

    save_resolved_config(cfg)
    with progress_bar(f"label ({cfg.label.labeller}, {cfg.label.mode})") as advance:
        result = run_label(cfg, on_progress=advance)
    summary(
        f"labelled {result.labelled} of {result.total} steps ({result.skipped_existing} already labelled, "
        f"{result.parse_errors} answers did not parse)",
        result.out_dir,
    )


label_epilog = examples(
    "vlmppo label --preset numberline-tiny",
    "vlmppo label --preset minigrid-doorkey-qwen --labeller openai label.model=Qwen2.5-VL-32B-Instruct",
    "vlmppo label --preset blackjack-qwen --labeller expert --mode score",
)


def preprocess(
    overrides: OverridesArg = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    dry_run: DryRunOpt = False,
):
    """Turn labelled trajectories into the SFT dataset (chat messages + images), filtered and split."""
    cfg = resolve_config(preset, config, overrides)
    if dry_run:
        return print_dry_run(cfg, "preprocess")
    from vlmppo.data.preprocess import preprocess as run_preprocess

    save_resolved_config(cfg)
    result = run_preprocess(cfg)
    print_preprocess_summary(result)


preprocess_epilog = examples(
    "vlmppo preprocess --preset numberline-tiny",
    "vlmppo preprocess --preset minigrid-doorkey-qwen preprocess.only_success=true preprocess.min_score=8",
)


def sft(
    overrides: OverridesArg = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    resume: ResumeOpt = None,
    dry_run: DryRunOpt = False,
):
    """Supervised fine-tuning (LoRA or full) on the preprocessed dataset."""
    cfg = resolve_config(preset, config, overrides)
    if dry_run:
        return print_dry_run(cfg, "sft")
    stage_not_built("sft", 6)


sft_epilog = examples(
    "vlmppo sft --preset numberline-tiny",
    "vlmppo sft --preset numberline-qwen sft.lr=5e-5 sft.epochs=3 --resume auto",
    "vlmppo sft --preset minigrid-doorkey-qwen sft.launch=zero2 --dry-run",
)


def ppo(
    overrides: OverridesArg = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    resume: ResumeOpt = None,
    dry_run: DryRunOpt = False,
):
    """On-line PPO of the VLM (RL4VLM): chain of thought + action, value head, GAE, clipped updates."""
    cfg = resolve_config(preset, config, overrides)
    if dry_run:
        return print_dry_run(cfg, "ppo")
    if resume:
        stage_not_built("ppo --resume", 7)
    from vlmppo.rl.ppo import train_ppo

    save_resolved_config(cfg)
    with progress_bar("ppo: updates") as advance:
        result = train_ppo(cfg, on_update=lambda u, total, m: advance(u, total))
    m = result.last_metrics
    summary(
        f"{result.updates} updates, {result.env_steps} env steps; last update: success "
        f"{m.get('rollout/success_rate')}, invalid actions {m.get('rollout/invalid_action_rate', 0):.0%}",
        result.out_dir,
    )


ppo_epilog = examples(
    "vlmppo ppo --preset probe-color-tiny",
    "vlmppo ppo --preset minigrid-doorkey-qwen --dry-run",
    "vlmppo ppo --preset numberline-qwen ppo.clip_range=0.2 env.n_envs=32 --resume auto",
)


def evaluate(
    overrides: OverridesArg = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    ckpt: Annotated[str | None, typer.Option(help="Checkpoint path, or last | sft | ppo.")] = None,
    policy: Annotated[
        str | None, typer.Option(help="Baseline instead of a checkpoint: expert | random.")
    ] = None,
    episodes: Annotated[int | None, typer.Option(help="Episodes per seed.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds, e.g. 0,1,2.")] = None,
    greedy: Annotated[
        bool | None, typer.Option("--greedy/--sample", help="Greedy or sampled answers.")
    ] = None,
    dry_run: DryRunOpt = False,
):
    """Evaluate a checkpoint or a baseline: success rate (95% CI), return, length, invalid actions, report."""
    extra = [f"eval.{k}={v}" for k, v in (("ckpt", ckpt), ("episodes", episodes)) if v is not None]
    if seeds:
        extra.append(f"eval.seeds=[{seeds}]")
    if greedy is not None:
        extra.append(f"eval.greedy={str(greedy).lower()}")
    cfg = resolve_config(preset, config, overrides, extra)
    if dry_run:
        return print_dry_run(cfg, "eval")
    stage_not_built("eval", 8)


eval_epilog = examples(
    "vlmppo eval --preset probe-color-tiny --ckpt last",
    "vlmppo eval --preset numberline-qwen --ckpt runs/numberline-qwen/ppo/checkpoints/last --seeds 0,1,2",
    "vlmppo eval --preset minigrid-doorkey-qwen --policy expert --episodes 200",
)


def pipeline(
    overrides: OverridesArg = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    from_stage: Annotated[str | None, typer.Option("--from", help="First stage to run.")] = None,
    to_stage: Annotated[str | None, typer.Option("--to", help="Last stage to run.")] = None,
    dry_run: DryRunOpt = False,
):
    """Run collect -> label -> preprocess -> sft -> ppo -> eval with one config, skipping finished stages."""
    cfg = resolve_config(preset, config, overrides)
    if dry_run:
        return print_dry_run(cfg, "collect", "label", "preprocess", "sft", "ppo", "eval")
    stage_not_built("pipeline", 8)


pipeline_epilog = examples(
    "vlmppo pipeline --preset probe-color-tiny",
    "vlmppo pipeline --preset numberline-qwen --from sft --to eval",
)
