"""SLURM jobs from presets: render sbatch files, submit them (arrays, chains), and watch, cancel and read them.

Used by ``vlmppo slurm``; callable without the CLI::

    from vlmppo.config import load_config
    from vlmppo.slurm import submit_stage
    submit_stage(load_config("numberline-tiny"), "collect")
"""

from vlmppo.registry import TRAINING_STAGES
from vlmppo.slurm.query import JobState, cancel, job_states, last_metrics, log_files, records
from vlmppo.slurm.render import JobFiles, render_script, write_job
from vlmppo.slurm.request import check_request, parse_seeds
from vlmppo.slurm.submit import Submission, pipeline_stages, slurm_tool, submit_chain, submit_stage

__all__ = [
    "TRAINING_STAGES",
    "JobFiles",
    "JobState",
    "Submission",
    "cancel",
    "check_request",
    "job_states",
    "last_metrics",
    "log_files",
    "parse_seeds",
    "pipeline_stages",
    "records",
    "render_script",
    "slurm_tool",
    "submit_chain",
    "submit_stage",
    "write_job",
]
