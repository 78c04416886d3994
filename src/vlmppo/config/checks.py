"""The checks that read more than one section of a config (``Config`` runs them after each section's own)."""

from __future__ import annotations

import re

# A run name is one folder name: letters and digits (any script), and _ . - + = @ inside it.
_RUN_NAME = re.compile(r"[^\W_][\w.+=@-]*|_[\w.+=@-]*")


def run_name_problem(value: str) -> str | None:
    """Why ``value`` cannot be ``run.name`` (None when it can). The name becomes a folder under output_dir and
    appears in job names and printed commands: a path ("../x", "/tmp/x"), an option ("-x") or shell text
    ("$(...)") must never get that far."""
    if _RUN_NAME.fullmatch(value):
        return None
    if not value:
        problem = "it is empty"
    elif "/" in value or "\\" in value or value in (".", ".."):
        problem = "it is a path"
    elif value[0] in "-.":
        problem = f"it starts with {value[0]!r}"
    else:
        bad = dict.fromkeys(c for c in value if not re.fullmatch(r"[\w.+=@-]", c))
        problem = f"it contains {', '.join(map(repr, bad))}"
    return (
        f"not one folder name ({problem}); use letters, digits and _ . - + = @ (not . or - first), "
        "e.g. numberline-qwen-lr1e-5"
    )


def cross_section_problems(cfg) -> list[str]:
    """Every inconsistency between the sections of ``cfg`` (a ``schema.Config``; not imported here: the schema
    imports this module), each one sentence naming the fields and values."""
    problems = []
    rollout = cfg.env.n_envs * cfg.ppo.n_steps
    if cfg.ppo.minibatch_size > rollout:
        problems.append(
            f"ppo.minibatch_size ({cfg.ppo.minibatch_size}) is larger than one rollout "
            f"(env.n_envs * ppo.n_steps = {cfg.env.n_envs} * {cfg.ppo.n_steps} = {rollout})"
        )
    if cfg.ppo.micro_batch_size > cfg.ppo.minibatch_size:
        problems.append(
            f"ppo.micro_batch_size ({cfg.ppo.micro_batch_size}) is larger than ppo.minibatch_size "
            f"({cfg.ppo.minibatch_size})"
        )
    elif cfg.ppo.minibatch_size % cfg.ppo.micro_batch_size:
        problems.append(
            f"ppo.minibatch_size ({cfg.ppo.minibatch_size}) is not a multiple of ppo.micro_batch_size "
            f"({cfg.ppo.micro_batch_size})"
        )
    if cfg.ppo.advantage != "gae":
        problems += _group_problems(cfg.env, cfg.ppo)
    problems += _critic_problems(cfg)
    if cfg.ppo.eval_every and not cfg.eval.seeds:
        problems.append(
            f"ppo.eval_every={cfg.ppo.eval_every} evaluates on eval.seeds, which is empty; give it a seed "
            "(e.g. eval.seeds=[1000]) or set ppo.eval_every=null"
        )
    if cfg.sft.eval_episodes and not cfg.eval.seeds:
        problems.append(
            f"sft.eval_episodes={cfg.sft.eval_episodes} plays eval.seeds, which is empty; give it a seed "
            "(e.g. eval.seeds=[1000]) or set sft.eval_episodes=null"
        )
    if cfg.sft.eval_episodes and cfg.sft.launch.startswith("zero3"):
        problems.append(
            f"sft.eval_episodes plays episodes on rank 0 alone, which sft.launch={cfg.sft.launch} cannot (each "
            "rank holds a shard of the weights); use zero2 or ddp, or set sft.eval_episodes=null"
        )
    if cfg.ppo.min_lr > cfg.ppo.lr:
        problems.append(f"ppo.min_lr ({cfg.ppo.min_lr}) is larger than ppo.lr ({cfg.ppo.lr})")
    if cfg.slurm.gpus_per_node > cfg.slurm.max_gpus_per_node:
        problems.append(
            f"slurm.gpus_per_node ({cfg.slurm.gpus_per_node}) is more than the cluster's nodes have "
            f"(slurm.max_gpus_per_node = {cfg.slurm.max_gpus_per_node})"
        )
    size, sep, built = cfg.model.path.partition(":")
    if sep and size in ("tiny", "small") and built != cfg.model.family:
        problems.append(
            f"model.path '{cfg.model.path}' builds a {size} {built!r} model but model.family is "
            f"{cfg.model.family!r}; use model.path={size}:{cfg.model.family}"
        )
    if cfg.model.quantization and cfg.ppo.merged_sampling is True:
        problems.append(
            f"ppo.merged_sampling=true cannot be used with model.quantization={cfg.model.quantization}: a "
            "quantised base has no weights to merge the adapter into; use ppo.merged_sampling=auto or false"
        )
    if cfg.model.quantization and cfg.sft.launch.startswith("zero3"):
        problems.append(
            f"sft.launch={cfg.sft.launch} shards the base weights, which a quantised base "
            f"(model.quantization={cfg.model.quantization}) cannot be; use sft.launch=single, ddp or zero2"
        )
    return problems


def _critic_problems(cfg) -> list[str]:
    """What the value warm-up cannot do (``ppo.value_detach`` is moot without a value head, so a preset that
    sets it still runs GRPO/GiGPO)."""
    ppo, problems = cfg.ppo, []
    if ppo.value_warmup_updates and ppo.advantage != "gae":
        problems.append(
            f"ppo.value_warmup_updates={ppo.value_warmup_updates} needs a value head, which "
            f"ppo.advantage={ppo.advantage} has not"
        )
    if ppo.value_warmup_updates and ppo.launch != "single":
        problems.append(
            f"ppo.value_warmup_updates={ppo.value_warmup_updates} runs in one process only (not ppo.launch="
            f"{ppo.launch}); warm the value head up in a single-process run and resume it with the launch"
        )
    updates = -(-ppo.total_env_steps // (cfg.env.n_envs * ppo.n_steps))
    if ppo.value_warmup_updates >= updates:
        problems.append(
            f"ppo.value_warmup_updates ({ppo.value_warmup_updates}) is not less than the run's {updates} updates "
            f"(ppo.total_env_steps={ppo.total_env_steps}): the policy would never train"
        )
    return problems


def _group_problems(env, ppo) -> list[str]:
    """What makes grpo/gigpo groups impossible or useless (every one gets no learning signal)."""
    problems = []
    if env.n_envs % ppo.group_size:
        problems.append(
            f"ppo.advantage={ppo.advantage} needs env.n_envs ({env.n_envs}) to be a multiple of ppo.group_size "
            f"({ppo.group_size})"
        )
    if ppo.group_size == 1:
        problems.append(f"ppo.advantage={ppo.advantage} with ppo.group_size=1 has no peers to compare with")
    if env.max_episode_steps is not None and env.max_episode_steps > ppo.n_steps:
        problems.append(
            f"ppo.advantage={ppo.advantage}: an episode of env.max_episode_steps={env.max_episode_steps} steps "
            f"does not fit a rollout of ppo.n_steps={ppo.n_steps} (every rollout starts new groups; an episode "
            "it cuts gets no credit)"
        )
    return problems
