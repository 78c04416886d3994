"""sbatch files from a run's resolved config.

The script is the shipped template (or ``slurm.template``) with five parts filled in: a title, the ``#SBATCH``
header, the setup lines, what runs (interpreter, config, launcher rendezvous) and the launch itself. It names
no hyperparameter: the launch is ``vlmppo STAGE --config <resolved config.yaml>``. Every value that comes from
the config is passed through ``shlex.quote``; ``slurm.setup`` lines are shell by design and go in verbatim.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from vlmppo.config import config_to_yaml, run_dir
from vlmppo.config.schema import Config
from vlmppo.errors import SlurmError
from vlmppo.io import atomic_write_text
from vlmppo.registry import TRAINING_STAGES
from vlmppo.sft.launching import launch_config_path
from vlmppo.slurm.request import Layout, check_request, layout

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
PARTS = ("title", "sbatch", "setup", "run", "launch")
REQUIRED_PARTS = ("sbatch", "run", "launch")
# Asks the OS for a port that is free on this node right now (the launchers' default port collides when two
# jobs share a node).
FREE_PORT = 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'


@dataclass
class JobFiles:
    """What ``write_job`` wrote for one stage: the script and one resolved config per run (per array task)."""

    stage: str
    script: Path
    text: str
    configs: list[Path]
    run_dirs: list[Path]
    slurm_dir: Path
    output: str
    error: str
    seeds: list[int] | None = None
    notes: list[str] = field(default_factory=list)


def seed_configs(cfg: Config, seeds: list[int] | None) -> list[Config]:
    """One config per array task: run ``<name>-seed<k>`` with ``run.seed = k``; just ``cfg`` without seeds."""
    if not seeds:
        return [cfg]
    configs = []
    for seed in seeds:
        copy = cfg.model_copy(deep=True)
        copy.run.name = f"{cfg.run.name}-seed{seed}"
        copy.run.seed = seed
        configs.append(copy)
    return configs


def pipeline_run_config(cfg: Config, stages: list[str], cwd: Path) -> Config:
    """``cfg`` as ``vlmppo pipeline`` hands it to its stages (``vlmppo.pipeline.pipeline_config``): PPO starts from
    this run's SFT checkpoint when ``ppo.init_from`` is null and SFT is one of ``stages`` or has a checkpoint.

    That rule looks for the checkpoint relative to the process's folder; the job runs in ``cwd``, so the run
    folder is looked up there and only ``ppo.init_from`` is taken from the answer.
    """
    from vlmppo.pipeline import pipeline_config

    located = cfg.model_copy(
        update={"run": cfg.run.model_copy(update={"output_dir": str(cwd / cfg.run.output_dir)})}
    )
    init_from = pipeline_config(located, stages).ppo.init_from
    if init_from == cfg.ppo.init_from:
        return cfg
    return cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"init_from": init_from})})


def load_template(cfg: Config, cwd: Path) -> str:
    """The user's ``slurm.template`` if set, else the one shipped in the package."""
    if cfg.slurm.template is None:
        return (resources.files("vlmppo.slurm") / "templates" / "job.sbatch").read_text(encoding="utf-8")
    path = cwd / Path(cfg.slurm.template).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SlurmError(f"slurm.template {path} cannot be read ({exc.strerror or exc}).") from None


def fill_template(template: str, parts: dict[str, str], source: str = "given") -> str:
    """Replace each ``{{ name }}``; inserted text is not scanned again, so values cannot add placeholders."""
    names = PLACEHOLDER.findall(template)
    unknown = sorted(set(names) - set(parts))
    missing = [name for name in REQUIRED_PARTS if name not in names]
    if unknown or missing:
        problems = [f"unknown placeholder {{{{ {n} }}}}" for n in unknown]
        problems += [f"no {{{{ {n} }}}} (the job would not run as configured)" for n in missing]
        raise SlurmError(
            f"The sbatch template ({source}) is not usable: {'; '.join(problems)}.",
            hint=f"Its placeholders are {', '.join(f'{{{{ {p} }}}}' for p in PARTS)}; start from the shipped one.",
        )
    return PLACEHOLDER.sub(lambda m: parts[m.group(1)], template)


def sbatch_header(
    cfg: Config, stage: str, lay: Layout, *, slurm_dir: Path, cwd: Path, tasks: int | None
) -> str:
    """The ``#SBATCH`` lines; sbatch reads them with shell-like quoting, and bash sees comments."""
    s = cfg.slurm
    pattern = "%A_%a" if tasks else "%j"
    options: list[tuple[str, object]] = [("job-name", f"{cfg.run.name}-{stage}")]
    options += [
        (key, value)
        for key, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos))
        if value
    ]
    # One task per node: the launcher on each node starts one process per GPU itself.
    options += [("nodes", lay.nodes), ("ntasks-per-node", 1)]
    if lay.gpus_per_node:
        options.append(("gpus-per-node", lay.gpus_per_node))
    options.append(("cpus-per-task", s.cpus_per_task))
    if s.mem is not None:
        options.append(("mem", s.mem))
    options += [
        ("time", s.time),
        # Relative paths in the config (run.output_dir) mean the same in the job as where it was rendered.
        ("chdir", str(cwd)),
        ("output", str(slurm_dir / f"{stage}-{pattern}.out")),
        ("error", str(slurm_dir / f"{stage}-{pattern}.err")),
        # A requeued job writes on after its earlier run's lines instead of truncating them.
        ("open-mode", "append"),
    ]
    if tasks:
        options.append(("array", f"0-{tasks - 1}"))
    lines = [f"#SBATCH --{key}={shlex.quote(str(value))}" for key, value in options]
    lines.append("#SBATCH --requeue" if s.requeue else "#SBATCH --no-requeue")
    lines.append(f"#SBATCH --signal=B:USR1@{s.signal_grace_s}")
    lines += [f"#SBATCH {shlex.quote(option)}" for option in s.extra_sbatch]
    return "\n".join(lines)


def accelerate_config(cfg: Config, stage: str) -> Path | None:
    """The shipped accelerate config file the launch passes as ``--config_file``, or None.

    ``vlmppo sft`` and ``vlmppo ppo`` with ``sft.launch``/``ppo.launch`` other than ``single`` under the
    accelerate launcher on GPUs have one: the file picks the distributed type (DDP, or DeepSpeed ZeRO-2/3)
    that accelerate launches. torchrun reads no such file; there the trainer builds the same DeepSpeed plugin
    from it by itself. CPU processes (``slurm.cpu_processes``) always go through torchrun.
    """
    if stage not in ("sft", "ppo") or cfg.slurm.launcher != "accelerate" or cpu_ranks(cfg, stage):
        return None
    return launch_config_path(getattr(cfg, stage).launch)


def cpu_ranks(cfg: Config, stage: str) -> bool:
    """Several CPU processes per node (``slurm.cpu_processes`` on a CPU-only job of a training stage)."""
    lay = layout(cfg, stage)
    return lay.gpus_per_node == 0 and lay.per_node > 1


def run_section(
    cfg: Config,
    lay: Layout,
    stage: str,
    *,
    configs: list[Path],
    seeds: list[int] | None,
    python: str,
    launch_config: Path | None = None,
) -> str:
    """Shell variables the launch reads: the interpreter, this task's config, the rendezvous of a launcher."""
    lines = []
    if lay.gpus_per_node == 0:
        lines += [
            "# A CPU job: one torch thread per process unless the environment or slurm.setup chose otherwise",
            "# (torch's default thread pool makes small models many times slower on shared cores).",
            'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"',
        ]
    lines.append(f"VLMPPO_PYTHON={shlex.quote(python)}")
    if seeds:
        lines.append(
            f"# Array task i runs the i-th of the seeds {','.join(map(str, seeds))}, in its own run folder."
        )
        lines.append("VLMPPO_CONFIGS=(" + " ".join(shlex.quote(str(p)) for p in configs) + ")")
        lines.append('VLMPPO_CONFIG="${VLMPPO_CONFIGS[$SLURM_ARRAY_TASK_ID]}"')
    else:
        lines.append(f"VLMPPO_CONFIG={shlex.quote(str(configs[0]))}")
    lines.append(f"VLMPPO_REQUEUE={1 if cfg.slurm.requeue else 0}")
    lines.append("export VLMPPO_PYTHON VLMPPO_CONFIG")
    if lay.gpus_per_node == 0 and lay.per_node > 1:
        lines += [
            f"# slurm.cpu_processes={lay.per_node}: CPU processes on gloo, started by torchrun (`accelerate launch",
            "# --cpu` would start one whatever --num_processes says).",
            "export ACCELERATE_USE_CPU=1",
        ]
    if launch_config is not None:
        key = f"{stage}.launch"
        launch = getattr(cfg, stage).launch  # one of the schema's fixed names: nothing to quote
        lines += [
            f"# {key}={launch}: the accelerate config shipped with vlmppo, read by `accelerate launch`.",
            f"VLMPPO_LAUNCH_CONFIG={shlex.quote(str(launch_config))}",
            'if [ ! -r "$VLMPPO_LAUNCH_CONFIG" ]; then',
            f'  echo "vlmppo: cannot read $VLMPPO_LAUNCH_CONFIG ({key}={launch}) on $(hostname); render the job'
            ' with the vlmppo that slurm.python runs." >&2',
            "  exit 1",
            "fi",
            "export VLMPPO_LAUNCH_CONFIG",
        ]
    if lay.distributed or launch_config is not None:
        if lay.nodes > 1:
            lines += [
                "# The head node: the first of the allocation, which is also where this script runs. sed reads",
                "# the whole list: `head -n1` could exit first, and scontrol's SIGPIPE would fail the job (pipefail).",
                'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)"',
            ]
        else:
            lines.append("MASTER_ADDR=127.0.0.1")
        lines.append(f'MASTER_PORT="$("$VLMPPO_PYTHON" -c {shlex.quote(FREE_PORT)})"')
        lines.append("export MASTER_ADDR MASTER_PORT")
    return "\n".join(lines)


def launch_section(cfg: Config, stage: str, lay: Layout, launch_config: Path | None = None) -> str:
    """The launch: vlmppo itself, or a launcher that starts one process per GPU (through srun on many nodes).

    With ``launch_config`` (see ``accelerate_config``) accelerate always launches, even one process, and the
    file, not ``--multi_gpu``, says how: ``--multi_gpu`` would make accelerate ignore the file's DeepSpeed.
    """
    vlmppo = f'-m vlmppo {shlex.quote(stage)} --config "$VLMPPO_CONFIG"'
    if stage in TRAINING_STAGES:
        vlmppo += " --resume auto"
    if not lay.distributed and launch_config is None:
        return f'  exec "$VLMPPO_PYTHON" {vlmppo}'
    many = lay.nodes > 1
    nnodes, rank = ('"$SLURM_NNODES"', '"$SLURM_NODEID"') if many else ("1", "0")
    # Groups of words, one line each in the script.
    if cfg.slurm.launcher == "torchrun" or (
        lay.gpus_per_node == 0 and lay.per_node > 1
    ):  # CPU ranks: torchrun
        launcher = [
            f'"$VLMPPO_PYTHON" -m torch.distributed.run --nproc_per_node {lay.per_node}',
            f"--nnodes {nnodes} --node_rank {rank}",
            '--master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"',
        ]
    else:
        how = '--config_file "$VLMPPO_LAUNCH_CONFIG"' if launch_config is not None else "--multi_gpu"
        launcher = [
            f'"$VLMPPO_PYTHON" -m accelerate.commands.launch {how} --num_processes {lay.processes}',
            f"--num_machines {nnodes} --machine_rank {rank}",
            '--main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT"',
        ]
        if launch_config is not None and many and getattr(cfg, stage).launch.startswith("zero"):
            # accelerate's default for DeepSpeed on several nodes is pdsh over ssh from the head node; srun
            # already started one launcher per node, so each runs its node's processes with torch's launcher.
            launcher.append("--deepspeed_multinode_launcher standard")
    launcher.append(vlmppo)
    if not many:
        return "  exec " + " \\\n    ".join(launcher)
    gpus = f" --gpus-per-node={lay.gpus_per_node}" if lay.gpus_per_node else ""
    # srun in 22.05+ does not inherit --cpus-per-task from sbatch, so it is passed on explicitly.
    srun = f'srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --cpus-per-task="$SLURM_CPUS_PER_TASK"{gpus} --kill-on-bad-exit=1'
    # Single quotes keep $SLURM_NODEID for the shell that srun starts on each node, where it is that node's rank.
    inner = shlex.quote("exec " + " ".join(launcher))
    return "\n".join(
        [
            "  # srun starts one launcher per node; each reads its own node rank from $SLURM_NODEID there.",
            f"  exec {srun} \\",
            f"    bash -c {inner}",
        ]
    )


def render_script(
    cfg: Config,
    stage: str,
    *,
    configs: list[Path],
    slurm_dir: Path,
    cwd: Path,
    seeds: list[int] | None = None,
) -> str:
    """The sbatch script text for ``stage`` (checked with ``check_request`` first).

    Args:
        configs: absolute paths of the resolved config files, one per array task (one without seeds).
        slurm_dir: absolute folder for the job's output and error files.
        cwd: the folder the job runs in (relative paths in the config are relative to it).
        seeds: the array's seeds, in task order; None for a plain job.
    """
    check_request(cfg, stage)
    lay = layout(cfg, stage)
    python = cfg.slurm.python or sys.executable
    launch_config = accelerate_config(cfg, stage)
    names = f"{cfg.run.name}-seed{{{','.join(map(str, seeds))}}}" if seeds else cfg.run.name
    parts = {
        "title": f"vlmppo {stage} for run {names}: {lay.nodes} node(s) x {lay.gpus_per_node} GPU(s), "
        f"{lay.processes} process(es).",
        "sbatch": sbatch_header(
            cfg, stage, lay, slurm_dir=slurm_dir, cwd=cwd, tasks=len(seeds) if seeds else None
        ),
        "setup": "\n".join(cfg.slurm.setup)
        or "# (none: the job keeps the environment sbatch was called from)",
        "run": run_section(
            cfg, lay, stage, configs=configs, seeds=seeds, python=python, launch_config=launch_config
        ),
        "launch": launch_section(cfg, stage, lay, launch_config),
    }
    source = cfg.slurm.template or "shipped with vlmppo"
    return fill_template(load_template(cfg, cwd), parts, source)


def write_job(
    cfg: Config,
    stage: str,
    *,
    seeds: list[int] | None = None,
    out: Path | None = None,
    cwd: Path | None = None,
    pipeline: list[str] | None = None,
) -> JobFiles:
    """Write each run's ``config.yaml`` and the stage's sbatch file (atomically); nothing is submitted.

    The script goes to ``<run>/slurm/<stage>.sbatch`` (or ``out``); with seeds, each task's run is
    ``<name>-seed<k>`` and the script, logs and jobs.jsonl stay in ``<name>/slurm/``. ``pipeline``: the stages
    of the chain this job is part of; each run's config then follows ``vlmppo pipeline``'s rule for
    ``ppo.init_from`` (see ``pipeline_run_config``).
    """
    cwd = Path(os.path.abspath(cwd or Path.cwd()))
    runs = seed_configs(cfg, seeds)
    if pipeline is not None:
        runs = [pipeline_run_config(c, pipeline, cwd) for c in runs]
    run_dirs = [Path(os.path.abspath(cwd / run_dir(c))) for c in runs]
    slurm_dir = Path(os.path.abspath(cwd / run_dir(cfg))) / "slurm"
    configs = [d / "config.yaml" for d in run_dirs]
    text = render_script(cfg, stage, configs=configs, slurm_dir=slurm_dir, cwd=cwd, seeds=seeds)
    for config, path in zip(runs, configs, strict=True):
        atomic_write_text(path, config_to_yaml(config))
    # SLURM does not create the folder of --output/--error; a job whose log folder is missing fails unseen.
    slurm_dir.mkdir(parents=True, exist_ok=True)
    script = Path(os.path.abspath(cwd / out)) if out else slurm_dir / f"{stage}.sbatch"
    atomic_write_text(script, text)
    script.chmod(0o755)
    pattern = "%A_%a" if seeds else "%j"
    notes = []
    if stage == "ppo" and cfg.ppo.init_from is None and any(c.ppo.init_from for c in runs):
        notes.append(
            "PPO starts from this run's SFT checkpoint (ppo.init_from=sft), as in `vlmppo pipeline`; "
            "set ppo.init_from to choose otherwise."
        )
    if stage not in TRAINING_STAGES and cfg.slurm.nodes > 1:
        notes.append(
            f"`vlmppo {stage}` is one process, so its job asks for 1 node, not slurm.nodes={cfg.slurm.nodes}."
        )
    return JobFiles(
        stage=stage,
        script=script,
        text=text,
        configs=configs,
        run_dirs=run_dirs,
        slurm_dir=slurm_dir,
        output=str(slurm_dir / f"{stage}-{pattern}.out"),
        error=str(slurm_dir / f"{stage}-{pattern}.err"),
        seeds=seeds,
        notes=notes,
    )
