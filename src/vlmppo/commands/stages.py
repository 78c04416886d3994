"""The pipeline's stage commands: collect, label, preprocess, sft, ppo, eval, pipeline.

Each resolves the config, prints the plan on --dry-run, and calls one engine function.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated

import typer

from vlmppo.commands._common import (
    ConfigOpt,
    DryRunOpt,
    OverridesArg,
    PresetOpt,
    ResumeOpt,
    check_quantization_here,
    checkpoint_config,
    examples,
    model_wait,
    print_comparison,
    print_dry_run,
    print_preprocess_summary,
    progress_bar,
    resolve_config,
    save_resolved_config,
    success_table,
    summary,
)
from vlmppo.commands.launching import (
    GpusOpt,
    LaunchOpt,
    is_main_rank,
    launch_overrides,
    print_launch,
    said_once,
    start_processes,
    wants_launch,
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
    waiting = model_wait(cfg) if cfg.collect.policy == "checkpoint" else ""
    with progress_bar("collect: episodes", waiting) as advance:
        result = run_collect(cfg, on_episode=advance)
    summary(
        f"collected {result.episodes} episodes, {result.steps} steps "
        f"({result.resumed} kept from an earlier run); success rate {result.success_rate:.1%} "
        f"(return > 0), solved {result.solved_rate:.1%}",
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
    if cfg.label.labeller == "openai":  # said before any request: the retries of a dead server take a minute
        from vlmppo.console import console
        from vlmppo.data.openai_client import missing_key_note

        note = missing_key_note(cfg.label.base_url, cfg.label.api_key_env)
        if note:
            console.print(f"note: {note}", markup=False, soft_wrap=True)
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
    dataset_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="vlmppo (train/val.jsonl) | llamafactory (also LLaMA-Factory's dataset_info.json).",
        ),
    ] = None,
    dry_run: DryRunOpt = False,
):
    """Turn labelled trajectories into the SFT dataset (chat messages + images), filtered and split."""
    extra = [f"preprocess.format={dataset_format}"] if dataset_format else []
    cfg = resolve_config(preset, config, overrides, extra)
    if dry_run:
        return print_dry_run(cfg, "preprocess")
    from vlmppo.data.preprocess import preprocess as run_preprocess

    save_resolved_config(cfg)
    result = run_preprocess(cfg)
    print_preprocess_summary(result)


preprocess_epilog = examples(
    "vlmppo preprocess --preset numberline-tiny",
    "vlmppo preprocess --preset numberline-qwen --format llamafactory",
    "vlmppo preprocess --preset minigrid-doorkey-qwen preprocess.only_success=true preprocess.min_score=8",
)


def sft(
    overrides: OverridesArg = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    resume: ResumeOpt = None,
    launch: LaunchOpt = None,
    gpus: GpusOpt = None,
    dry_run: DryRunOpt = False,
):
    """Supervised fine-tuning (LoRA or full) on the preprocessed dataset."""
    cfg = resolve_config(preset, config, overrides, launch_overrides("sft", launch))
    if dry_run:
        print_dry_run(cfg, "sft", world=gpus or 1)
        return print_launch(cfg, "sft", gpus) if wants_launch(cfg, "sft", gpus) else None
    if wants_launch(cfg, "sft", gpus):
        return start_processes(cfg, "sft", gpus)
    from vlmppo.console import console
    from vlmppo.eval.live import greedy_eval
    from vlmppo.quiet import quiet_libraries
    from vlmppo.sft import train_sft

    check_quantization_here(cfg)
    save_resolved_config(cfg)
    # Under a launcher (torchrun/accelerate: RANK is set) only the first process draws and prints.
    main = is_main_rank()
    with progress_bar("sft: optimizer steps", model_wait(cfg)) if main else quiet_libraries() as advance:
        result = train_sft(cfg, on_step=sft_reporter(advance) if main else None, resume=resume,
                           evaluate_env=greedy_eval)  # fmt: skip
    if not main:
        return
    if result.resumed_from:
        console.print(f"resumed from {result.resumed_from}")
    for change in result.resume_changes:
        console.print(f"[yellow]changed since the checkpoint:[/yellow] {change}", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    if result.stopped_by:
        console.print(
            f"[yellow]stopped on {result.stopped_by} after step {result.steps}: checkpoint {result.checkpoint} "
            "saved; `vlmppo sft ... --resume auto` continues the run.[/yellow]"
        )

    def pct(x):
        return "n/a" if x is None else f"{x:.1%}"

    speed = (
        "n/a"
        if result.steps_per_s is None
        else f"{result.steps_per_s:.2f} steps/s ({result.samples_per_s:.1f} samples/s)"
    )
    eval_loss = "n/a" if result.eval_loss is None else f"{result.eval_loss:.4f}"
    summary(
        f"{result.steps}/{result.total_steps} optimizer steps, {speed}; final eval loss {eval_loss}, "
        f"token accuracy {pct(result.eval_token_acc)}; greedy action accuracy {pct(result.action_acc)} "
        f"(unparseable {pct(result.unparseable_rate)}) on {result.n_action_eval} val samples; "
        f"{result.truncated} samples truncated, {result.skipped} skipped\n"
        f"  checkpoint: {result.final or result.checkpoint}",
        result.out_dir,
    )


def sft_status(m: dict) -> str:
    """One progress line of SFT: loss, LR, speed (and the eval loss and greedy success on eval steps)."""
    parts = [f"loss {m['sft/loss']:.3f}", f"lr {m['sft/lr']:.2g}", f"{m['time/samples_per_s']:.1f} samples/s"]
    if "eval/loss" in m:
        parts.append(f"eval loss {m['eval/loss']:.3f}")
    if "eval/success_rate" in m:
        parts.append(f"greedy success {m['eval/success_rate']:.0%} of {m['eval/episodes']}")
    return " · ".join(parts)


def sft_reporter(advance):
    """``on_step(step, total, row)`` for `train_sft` that moves ``advance``'s bar. Off a terminal (SLURM
    logs, CI) a status line goes with about 20 calls per run, plus the evals."""
    from vlmppo.console import console

    def on_step(step: int, total: int, m: dict) -> None:
        evaluated = "eval/loss" in m or "eval/success_rate" in m
        shown = console.is_terminal or evaluated or step % max(1, total // 20) == 0 or step == total
        advance(step, total, sft_status(m) if shown else "")

    return on_step


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
    launch: LaunchOpt = None,
    gpus: GpusOpt = None,
    dry_run: DryRunOpt = False,
):
    """On-line PPO of the VLM (RL4VLM): chain of thought + action, value head, GAE, clipped updates."""
    cfg = resolve_config(preset, config, overrides, launch_overrides("ppo", launch))
    if dry_run:
        print_dry_run(cfg, "ppo", world=gpus or 1)
        return print_launch(cfg, "ppo", gpus) if wants_launch(cfg, "ppo", gpus) else None
    if wants_launch(cfg, "ppo", gpus):
        return start_processes(cfg, "ppo", gpus)
    from vlmppo.console import console
    from vlmppo.eval.live import greedy_eval
    from vlmppo.quiet import quiet_libraries
    from vlmppo.rl import train_ppo
    from vlmppo.rl.checkpointing import check_resume_config, find_resume_checkpoint

    check_quantization_here(cfg)
    main = is_main_rank()  # under a launcher only rank 0 writes the config, prints and draws
    if main:
        save_resolved_config(cfg)
        notes: list[str] = []
        start = find_resume_checkpoint(cfg, resume, notes)
        for note in notes:
            console.print(f"note: {note}", markup=False, soft_wrap=True)
        if start is not None:
            console.print(f"resuming from {start}")
            for change in check_resume_config(start, cfg):  # a change the checkpoint fixes is an error
                console.print(f"[yellow]changed since the checkpoint:[/yellow] {change}", highlight=False)
    with (
        (
            progress_bar("ppo: updates", f"{model_wait(cfg)}, then the first update")
            if main
            else quiet_libraries()
        ) as advance,
        said_once(),
    ):
        reporter = (lambda u, total, m: advance(u, total, ppo_status(m))) if main else None
        result = train_ppo(cfg, on_update=reporter, resume=resume, evaluate=greedy_eval)
    if not main:
        return
    m = result.last_metrics
    if result.stopped_by:
        console.print(
            f"[yellow]stopped on {result.stopped_by} after update {result.updates}: checkpoint "
            f"{result.checkpoint} saved; `vlmppo ppo ... --resume auto` continues the run.[/yellow]"
        )
    success = m.get("rollout/success_rate")
    summary(
        f"{result.updates} updates, {result.env_steps} env steps; last update: success "
        f"{'n/a' if success is None else f'{success:.0%}'}, "
        f"invalid actions {m.get('rollout/invalid_action_rate', 0):.0%}",
        result.out_dir,
    )


def ppo_status(m: dict) -> str:
    """One progress line: what a user watches while PPO runs."""
    parts = [f"steps {m['env_steps']}"]
    for key, label, fmt in (
        ("rollout/success_rate", "success", "{:.0%}"),
        ("eval/success_rate", "greedy", "{:.0%}"),  # every ppo.eval_every updates
        ("rollout/ep_return_mean", "return", "{:.2f}"),
        ("rollout/invalid_action_rate", "invalid", "{:.0%}"),
        ("train/approx_kl", "kl", "{:.3f}"),
        ("time/env_steps_per_s", "steps/s", "{:.1f}"),
    ):
        if m.get(key) is not None:
            parts.append(f"{label} {fmt.format(m[key])}")
    return " · ".join(parts)


ppo_epilog = examples(
    "vlmppo ppo --preset probe-color-tiny",
    "vlmppo ppo --preset minigrid-doorkey-qwen --dry-run",
    "vlmppo ppo --preset numberline-qwen ppo.clip_range=0.2 env.n_envs=32 --resume auto",
    "vlmppo ppo --preset numberline-qwen --launch ddp --gpus 2 --dry-run",
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
    compare: Annotated[
        bool,
        typer.Option(
            "--compare", help="Print the metrics of the eval folders given as arguments side by side."
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing evaluation of the same checkpoint.")
    ] = False,
    dry_run: DryRunOpt = False,
):
    """Evaluate a checkpoint or a baseline: success rate (95% CI), return, length, invalid actions, report."""
    if compare:
        return print_comparison(list(overrides or []))
    extra = [f"eval.{k}={v}" for k, v in (("ckpt", ckpt), ("episodes", episodes)) if v is not None]
    if seeds:
        extra.append(f"eval.seeds=[{seeds}]")
    if greedy is not None:
        extra.append(f"eval.greedy={str(greedy).lower()}")
    if not preset and not config:
        # The checkpoint carries the config it was trained with: `eval --ckpt PATH` needs nothing else.
        config, location = checkpoint_config(ckpt)
        overrides = location + list(overrides or [])
    cfg = resolve_config(preset, config, overrides, extra)
    if dry_run:
        return print_dry_run(cfg, "eval")
    if policy and ckpt:
        from vlmppo.errors import ConfigError

        raise ConfigError(f"--policy {policy} and --ckpt {ckpt} exclude each other: evaluate one at a time.")
    from vlmppo.eval.runner import evaluate as run_eval

    # No save_resolved_config: an eval writes its config into its own folder, not over the run's.
    with progress_bar("eval: episodes", "" if policy else model_wait(cfg)) as advance:
        result = run_eval(cfg, policy=policy, on_episode=advance, overwrite=overwrite)
    m = result.metrics
    low, high = m["success_ci95"]
    summary(
        f"{result.name}: success {m['success_rate']:.1%} (95% CI {low:.1%}-{high:.1%}) over {m['episodes']} "
        f"episodes, return {m['return_mean']:.3g}, invalid actions {m['invalid_action_rate']:.1%}; "
        f"report {result.report.with_name('report.html')}",
        result.out_dir,
    )


eval_epilog = examples(
    "vlmppo eval --preset probe-color-tiny --ckpt last",
    "vlmppo eval --preset numberline-qwen --ckpt runs/numberline-qwen/ppo/checkpoints/last --seeds 0,1,2",
    "vlmppo eval --preset minigrid-doorkey-qwen --policy expert --episodes 200",
    "vlmppo eval --compare runs/probe-color-tiny/eval/random runs/probe-color-tiny/eval/ppo-000010",
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
    from vlmppo.config.plan import stage_range
    from vlmppo.pipeline import pipeline_config, run_pipeline

    stages = stage_range(from_stage, to_stage)
    if dry_run:
        return print_dry_run(pipeline_config(cfg, stages), *stages)
    from vlmppo.console import console

    if {"sft", "ppo", "eval"} & set(stages):
        check_quantization_here(cfg)
    save_resolved_config(cfg)
    numbered = {stage: i for i, stage in enumerate(stages, start=1)}

    def on_stage(stage: str, message: str) -> None:
        console.print(f"[bold][{numbered[stage]}/{len(stages)}] {stage}[/bold]: {message}", highlight=False)

    result = run_pipeline(
        cfg,
        start=from_stage,
        stop=to_stage,
        on_stage=on_stage,
        progress=lambda stage: stage_progress(stage, cfg),
    )
    print_pipeline_summary(result)


@contextmanager
def stage_progress(stage: str, cfg):
    """The pipeline's bar for one stage, with the status line that ``vlmppo <stage>`` shows."""
    waiting = {
        "sft": model_wait(cfg),
        "ppo": f"{model_wait(cfg)}, then the first update",
        "eval": model_wait(cfg),
    }
    with progress_bar(stage, waiting.get(stage, "")) as advance:
        if stage == "sft":
            yield sft_reporter(advance)
        elif stage == "ppo":
            yield lambda update, total, m: advance(update, total, ppo_status(m))
        else:
            yield lambda done, total, *_: advance(done, total)


def print_pipeline_summary(result) -> None:
    """What each stage did, the agent's success against the baselines, and where the report is."""
    from rich.table import Table

    from vlmppo.console import console

    table = Table(title="pipeline", title_justify="left")
    for column in ("stage", "what happened", "time"):
        table.add_column(column)
    for o in result.outcomes:
        if not o.ran:
            what = f"skipped: {o.reason}"
        elif not o.complete:
            what = "stopped before its end: run the pipeline again to continue"
        else:
            what = "ran" + (f" ({o.reason})" if o.reason else "")
        table.add_row(o.stage, what, f"{o.seconds:.1f} s" if o.ran else "-")
    console.print(table)
    if result.eval_metrics:
        console.print(success_table(result.eval_metrics, result.baselines))
    ran = [o.stage for o in result.outcomes if o.ran]
    seconds = sum(o.seconds for o in result.outcomes)
    summary(
        f"ran {', '.join(ran) or 'no stage'} in {seconds:.0f} s"
        + (f"\n  report: {result.report}" if result.report else ""),
        result.run_dir,
    )


pipeline_epilog = examples(
    "vlmppo pipeline --preset probe-color-tiny",
    "vlmppo pipeline --preset numberline-qwen --from sft --to eval",
)


# `vlmppo <stage>` for each name of vlmppo.registry.STAGES, and `vlmppo pipeline`: (command, epilog).
COMMANDS = {
    "collect": (collect, collect_epilog),
    "label": (label, label_epilog),
    "preprocess": (preprocess, preprocess_epilog),
    "sft": (sft, sft_epilog),
    "ppo": (ppo, ppo_epilog),
    "eval": (evaluate, eval_epilog),
    "pipeline": (pipeline, pipeline_epilog),
}
