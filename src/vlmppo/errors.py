"""User-facing errors.

Everything a user can cause (a bad preset, a missing file, a checkpoint of another model) raises a
``VlmppoError`` subclass whose message says what went wrong, where, and how to fix it. The CLI prints
that message as one paragraph and exits 1; programming errors are never caught here.
"""

from __future__ import annotations


class VlmppoError(Exception):
    """Base class of the errors the CLI turns into one clear message and exit code 1."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} {hint}")


class ConfigError(VlmppoError):
    """A preset, config file or override is invalid (unknown key, wrong type, contradiction)."""


class ModelError(VlmppoError):
    """A model path or family cannot be loaded."""


class EnvError(VlmppoError):
    """An environment id or option is unknown or unusable."""


class PluginError(EnvError):
    """A task plugin (``env.id``/``env.adapter`` naming user code) cannot be imported or breaks the adapter
    protocol: the message names the plugin and what is missing or wrong."""


class DataError(VlmppoError):
    """A dataset, trajectory or label file is missing, empty or malformed."""


class CheckpointError(VlmppoError):
    """A checkpoint is missing, incomplete, or belongs to another model."""


class LaunchError(VlmppoError):
    """A launch config (``sft.launch``) is unknown or cannot run here (e.g. DeepSpeed not installed)."""


class SlurmError(VlmppoError):
    """SLURM is missing, rejected a job, or the resource request is impossible."""


class StorageError(VlmppoError):
    """A file cannot be written: the disk is full, a quota or file-size limit is reached, or no permission."""


class RunBusyError(VlmppoError):
    """Another process is writing the same stage of the same run (its lock is held)."""


class ResultExistsError(VlmppoError):
    """A command would replace results that another command wrote (pass ``--overwrite`` to allow it)."""
