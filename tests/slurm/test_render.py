"""Rendered sbatch files: golden files for the shapes users submit, each accepted by `bash -n`.

Regenerate the goldens after an intended change with VLMPPO_UPDATE_GOLDEN=1 and read the diff.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import run_cli
from tests.slurm.helpers import fake_slurm, recording_python, write_executable

from vlmppo.config import load_config
from vlmppo.errors import SlurmError
from vlmppo.pipeline import pipeline_config
from vlmppo.sft.launching import LAUNCH_DIR, launch_config_path
from vlmppo.slurm import pipeline_stages, submit_chain, write_job

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
PRESET = str(HERE / "cluster.yaml")
PROJECT = "/home/user/project"  # what the test's temp folder is shown as in the goldens
# Where the shipped accelerate configs are shown to live in the goldens (cluster.yaml's venv).
SHOWN_LAUNCH_DIR = "/opt/venvs/vlmppo/lib/python3.11/site-packages/vlmppo/sft/launch"


def normalised(text: str, tmp_path: Path) -> str:
    return text.replace(str(tmp_path), PROJECT).replace(str(LAUNCH_DIR), SHOWN_LAUNCH_DIR)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("VLMPPO_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; create it with VLMPPO_UPDATE_GOLDEN=1"
    assert text == path.read_text(), (
        f"{name} differs from its golden file; VLMPPO_UPDATE_GOLDEN=1 rewrites it"
    )


def bash_accepts(text: str) -> None:
    out = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


CASES = {
    "ppo-1gpu.sbatch": ("ppo", [], None),
    "sft-2node-8gpu.sbatch": ("sft", ["slurm.nodes=2", "slurm.gpus_per_node=8"], None),
    "sft-2node-8gpu-torchrun.sbatch": (
        "sft",
        ["slurm.nodes=2", "slurm.gpus_per_node=8", "slurm.launcher=torchrun"],
        None,
    ),
    "sft-array-3-seeds.sbatch": ("sft", [], [1, 2, 3]),
    "sft-1node-8gpu-zero2.sbatch": ("sft", ["slurm.gpus_per_node=8", "sft.launch=zero2"], None),
    "sft-2node-8gpu-zero3-offload.sbatch": (
        "sft",
        ["slurm.nodes=2", "slurm.gpus_per_node=8", "sft.launch=zero3-offload"],
        None,
    ),
    "ppo-2node-8gpu-zero2.sbatch": (
        "ppo",
        ["slurm.nodes=2", "slurm.gpus_per_node=8", "ppo.launch=zero2"],
        None,
    ),
    "ppo-1node-cpu-2proc.sbatch": (
        "ppo",
        ["slurm.gpus_per_node=0", "slurm.cpu_processes=2", "ppo.launch=ddp", "slurm.setup=[]"],
        None,
    ),
    "collect-cpu.sbatch": (
        "collect",
        ["slurm.gpus_per_node=0", "slurm.setup=[]", "slurm.requeue=false"],
        None,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_rendered_script_matches_golden_and_bash_accepts_it(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stage, overrides, seeds = CASES[name]
    job = write_job(load_config(PRESET, None, overrides), stage, seeds=seeds)
    assert job.script.read_text() == job.text
    bash_accepts(job.text)
    check_golden(name, normalised(job.text, tmp_path))


def test_pipeline_submits_a_chain_of_afterok_jobs_and_records_each(tmp_path, monkeypatch):
    fake = fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    subs = submit_chain(load_config(PRESET), pipeline_stages(), after="100")
    assert [s.job_id for s in subs] == ["101", "102", "103", "104", "105", "106"]
    rows = [json.loads(line) for line in (tmp_path / "runs/golden/slurm/jobs.jsonl").read_text().splitlines()]
    for row in rows:
        assert row.pop("submitted")  # a time stamp: present, not compared
    for sub in subs:
        bash_accepts(sub.job.text)
    calls = (fake / "calls.txt").read_text()
    check_golden(
        "pipeline-chain.txt", normalised(calls + "\n".join(json.dumps(r) for r in rows) + "\n", tmp_path)
    )


@pytest.mark.parametrize(
    ("first", "overrides", "sft_checkpoint", "init_from"),
    [
        ("collect", [], False, "sft"),
        ("sft", [], False, "sft"),
        ("ppo", [], False, None),
        ("ppo", [], True, "sft"),  # SFT ran before: `vlmppo pipeline --from ppo` starts from it too
        ("sft", ["ppo.init_from=/models/adapter"], False, "/models/adapter"),  # a chosen start is kept
    ],
)
def test_chained_ppo_starts_from_sft_as_vlmppo_pipeline_does(
    first, overrides, sft_checkpoint, init_from, tmp_path
):
    cfg = load_config(PRESET, None, overrides)
    if sft_checkpoint:
        checkpoint = tmp_path / "runs/golden/sft/checkpoints/000004"
        checkpoint.mkdir(parents=True)
        (checkpoint / "vlmppo.json").write_text("{}")
    stages = pipeline_stages(first)
    job = write_job(cfg, "ppo", cwd=tmp_path, pipeline=stages)
    assert load_config(None, job.configs[0]).ppo.init_from == init_from
    # The same rule as the in-process pipeline's (asked from the run's folder, as it runs there).
    located = load_config(PRESET, None, [*overrides, f"run.output_dir={tmp_path / 'runs'}"])
    assert pipeline_config(located, stages).ppo.init_from == init_from
    # A stage submitted on its own is not a pipeline: `vlmppo ppo` keeps what the config says.
    alone = write_job(cfg, "ppo", cwd=tmp_path)
    assert load_config(None, alone.configs[0]).ppo.init_from == cfg.ppo.init_from


def test_launch_uses_the_rendering_interpreter_when_slurm_python_is_unset(tmp_path):
    cfg = load_config(PRESET, None, ["slurm.python=null", f"run.output_dir={tmp_path}"])
    job = write_job(cfg, "eval", cwd=tmp_path)
    assert f"VLMPPO_PYTHON={shlex.quote(sys.executable)}\n" in job.text
    assert 'exec "$VLMPPO_PYTHON" -m vlmppo eval --config "$VLMPPO_CONFIG"\n' in job.text  # no --resume


def test_script_names_no_hyperparameter_only_the_resolved_config(tmp_path):
    cfg = load_config(PRESET, None, ["ppo.lr=0.000123", "ppo.clip_range=0.37", f"run.output_dir={tmp_path}"])
    job = write_job(cfg, "ppo", cwd=tmp_path)
    assert "0.000123" not in job.text and "0.37" not in job.text
    saved = load_config(None, job.configs[0])
    assert saved.ppo.lr == 0.000123 and saved.ppo.clip_range == 0.37


def test_array_tasks_get_their_own_run_and_seed(tmp_path):
    job = write_job(
        load_config(PRESET, None, [f"run.output_dir={tmp_path}"]), "ppo", seeds=[7, 8], cwd=tmp_path
    )
    saved = [load_config(None, path) for path in job.configs]
    assert [(c.run.name, c.run.seed) for c in saved] == [("golden-seed7", 7), ("golden-seed8", 8)]
    assert job.script == tmp_path / "golden/slurm/ppo.sbatch"


def test_own_template_is_used_and_unknown_placeholders_are_errors(tmp_path):
    template = tmp_path / "mine.sbatch"
    template.write_text(
        "#!/bin/bash\n{{ sbatch }}\n#SBATCH --comment=mine\n{{ run }}\nlaunch() {\n{{ launch }}\n}\nlaunch\n"
    )
    cfg = load_config(PRESET, None, [f"slurm.template={template}", f"run.output_dir={tmp_path}"])
    text = write_job(cfg, "collect", cwd=tmp_path).text
    assert "#SBATCH --comment=mine" in text and "-m vlmppo collect" in text
    template.write_text("{{ sbatch }}\n{{ run }}\n{{ launch }}\n{{ hyperparameters }}\n")
    with pytest.raises(SlurmError, match=r"unknown placeholder \{\{ hyperparameters \}\}"):
        write_job(cfg, "collect", cwd=tmp_path)


def test_render_command_writes_config_and_script_and_prints_both(tmp_path):
    out = run_cli("slurm", "render", "ppo", "--preset", PRESET, "ppo.lr=0.0005", f"run.output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    config, script = tmp_path / "golden/config.yaml", tmp_path / "golden/slurm/ppo.sbatch"
    assert load_config(None, config).ppo.lr == 0.0005
    assert str(config) in out.stdout and str(script) in out.stdout
    assert "#SBATCH --signal=B:USR1@300" in out.stdout and "lr: 0.0005" in out.stdout


def test_render_out_option_writes_the_script_where_asked(tmp_path):
    target = tmp_path / "job.sh"
    out = run_cli(
        "slurm", "render", "collect", "--preset", PRESET, f"run.output_dir={tmp_path}", "--out", str(target)
    )
    assert out.returncode == 0, out.stderr
    assert target.read_text().startswith("#!/bin/bash")
    assert not (tmp_path / "golden/slurm/collect.sbatch").exists()


def run_script(script: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Execute a rendered script with bash, outside SLURM (with only PATH, HOME and ``env`` set)."""
    full_env = {"PATH": os.environ["PATH"], "HOME": str(cwd), **env}
    return subprocess.run(
        ["bash", str(script)], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60
    )


def many_node_slurm(folder: Path, nodes: int = 2) -> dict[str, str]:
    """Fake ``srun`` (runs its command once, as node 1) and ``scontrol show hostnames`` (node1..nodeN, one
    line each); returns the job's environment."""
    folder.mkdir(parents=True, exist_ok=True)
    write_executable(folder / "srun", '#!/bin/bash\nwhile [ "$1" != bash ]; do shift; done\nexec "$@"\n')
    write_executable(folder / "scontrol", f"#!/bin/bash\nfor i in $(seq {nodes}); do echo node$i; done\n")
    return {
        "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": f"node[1-{nodes}]",
        "SLURM_NNODES": str(nodes),
        "SLURM_NODEID": "1",
        "SLURM_CPUS_PER_TASK": "8",
    }


def launch_recording_python(folder: Path) -> Path:
    """Like ``recording_python``, but ``-c CODE`` (the free-port lookup) runs in the real interpreter."""
    argv = shlex.quote(str(folder / "argv.txt"))
    return write_executable(
        folder / "python-launch",
        f'#!/bin/bash\nif [ "$1" = -c ]; then exec {shlex.quote(sys.executable)} "$@"; fi\n'
        f'printf "%s\\n" "$@" > {argv}\n',
    )


def accelerate_launch_args(argv: list[str]):
    """What ``accelerate launch`` makes of a launch line (argv after the interpreter), by its own parser and
    checks, which read the --config_file the line names."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    assert argv[:2] == ["-m", "accelerate.commands.launch"], argv
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv[2:]))
    return args


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("launch", ["ddp", "zero2", "zero3", "zero3-offload"])
def test_sft_launch_passes_the_shipped_accelerate_config_and_accelerate_reads_it(launch, nodes, tmp_path):
    """The launch that runs names launch_config_path(sft.launch), and accelerate launches what the file says."""
    python = launch_recording_python(tmp_path)
    overrides = [f"slurm.nodes={nodes}", "slurm.gpus_per_node=8", f"sft.launch={launch}"]
    cfg = load_config(
        PRESET, None, [*overrides, f"slurm.python={python}", f"run.output_dir={tmp_path}", "slurm.setup=[]"]
    )
    job = write_job(cfg, "sft", cwd=tmp_path)
    out = run_script(job.script, tmp_path, **(many_node_slurm(tmp_path / "bin") if nodes > 1 else {}))
    assert out.returncode == 0, out.stderr
    argv = (tmp_path / "argv.txt").read_text().splitlines()
    assert argv[2:4] == ["--config_file", str(launch_config_path(launch))] and "--multi_gpu" not in argv
    args = accelerate_launch_args(argv)
    zero = {"ddp": None, "zero2": 2, "zero3": 3, "zero3-offload": 3}[launch]
    assert (args.use_deepspeed, args.multi_gpu) == ((True, False) if zero else (False, True))
    assert getattr(args, "zero_stage", None) == zero
    assert getattr(args, "offload_param_device", None) == (
        "cpu" if launch == "zero3-offload" else None if not zero else "none"
    )
    assert (args.num_processes, args.num_machines, args.machine_rank) == (8 * nodes, nodes, nodes - 1)
    assert args.main_process_ip == ("node1" if nodes > 1 else "127.0.0.1") and args.main_process_port > 0
    if zero and nodes > 1:  # torch's launcher on each node that srun started, not pdsh over ssh
        assert args.deepspeed_multinode_launcher == "standard"
    assert args.module and args.training_script == "vlmppo"
    assert args.training_script_args == ["sft", "--config", str(job.configs[0]), "--resume", "auto"]


def test_head_node_is_the_first_host_even_of_a_long_host_list(tmp_path):
    """`scontrol show hostnames` of a big allocation is longer than a pipe holds: reading only its first line
    must not kill scontrol with SIGPIPE, which `set -o pipefail` would turn into a failed job."""
    python = launch_recording_python(tmp_path)
    overrides = ["slurm.nodes=2", f"slurm.python={python}", f"run.output_dir={tmp_path}", "slurm.setup=[]"]
    job = write_job(load_config(PRESET, None, overrides), "sft", cwd=tmp_path)
    out = run_script(job.script, tmp_path, **many_node_slurm(tmp_path / "bin", nodes=20000))
    assert out.returncode == 0, out.stderr
    argv = (tmp_path / "argv.txt").read_text().splitlines()
    assert argv[argv.index("--main_process_ip") + 1] == "node1"


def test_a_missing_accelerate_config_stops_the_job_with_one_line(tmp_path):
    """Rendered with one install and run with another: the job says so instead of accelerate's traceback."""
    python = recording_python(tmp_path)
    overrides = ["sft.launch=zero2", f"slurm.python={python}", f"run.output_dir={tmp_path}", "slurm.setup=[]"]
    cfg = load_config(PRESET, None, overrides)
    job = write_job(cfg, "sft", cwd=tmp_path)
    job.script.write_text(job.text.replace(str(launch_config_path("zero2")), str(tmp_path / "gone.yaml")))
    out = run_script(job.script, tmp_path)
    assert out.returncode == 1
    assert f"vlmppo: cannot read {tmp_path}/gone.yaml (sft.launch=zero2) on" in out.stderr
    assert not (tmp_path / "argv.txt").exists()  # nothing was started


@pytest.mark.parametrize(
    "overrides",
    [
        ["sft.launch=single", "slurm.gpus_per_node=8"],  # plain DDP through --multi_gpu, as before
        [
            "sft.launch=zero2",
            "slurm.launcher=torchrun",
            "slurm.gpus_per_node=8",
        ],  # the trainer reads the file
    ],
)
def test_no_accelerate_config_where_the_launcher_takes_none(overrides, tmp_path):
    cfg = load_config(PRESET, None, [*overrides, f"run.output_dir={tmp_path}"])
    assert "--config_file" not in write_job(cfg, "sft", cwd=tmp_path).text


def test_cpu_jobs_run_one_torch_thread_unless_told_otherwise(tmp_path):
    seen = tmp_path / "omp.txt"
    python = write_executable(
        tmp_path / "python-omp",
        f'#!/bin/bash\necho "${{OMP_NUM_THREADS-unset}}" > {shlex.quote(str(seen))}\n',
    )
    base = [f"slurm.python={python}", f"run.output_dir={tmp_path}", "slurm.setup=[]"]

    def threads(overrides: list[str], **env: str) -> str:
        job = write_job(load_config(PRESET, None, [*base, *overrides]), "collect", cwd=tmp_path)
        out = run_script(job.script, tmp_path, **env)
        assert out.returncode == 0, out.stderr
        return seen.read_text().strip()

    cpu = ["slurm.gpus_per_node=0"]
    assert threads(cpu) == "1"
    assert threads(cpu, OMP_NUM_THREADS="3") == "3"  # exported where sbatch was called: kept
    assert threads([*cpu, "slurm.setup=['export OMP_NUM_THREADS=2']"]) == "2"
    assert threads(["slurm.gpus_per_node=1"]) == "unset"  # GPU jobs: torch's and the launchers' own choice
