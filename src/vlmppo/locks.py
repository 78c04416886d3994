"""One writer per run stage: an advisory ``fcntl.flock`` on ``runs/<name>/.locks/<stage>.lock``.

Two ``vlmppo ppo`` processes on the same run would write their updates into one folder. Each stage's engine
function therefore holds its stage's lock while it runs (``@locked("ppo")``), and a second process fails at
once with one line naming the holder (pid, host, command, start time), which the holder wrote into the
lock file.

Why ``flock``: the kernel drops the lock when its process ends, however it ends (``kill -9``, a node reboot
for local disks), so a lock is never stale; the file left behind only says who held it last. It is taken on
an open file description, so one process may hold a stage (``pipeline`` takes each stage's lock, then calls
the engine, which takes it again) through ``_held`` here. Under a launcher (``torchrun``, ``accelerate``:
``RANK`` set) only rank 0 takes it: the other ranks are the same run, not a second writer.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vlmppo.errors import RunBusyError

LOCK_DIR = ".locks"
_held: dict[str, int] = {}  # lock file -> how many nested holders in this process


def lock_path(run_root: Path, stage: str) -> Path:
    return Path(run_root) / LOCK_DIR / f"{stage}.lock"


def _command() -> str:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    program = "vlmppo" if program in ("__main__.py", "vlmppo") else program
    return shlex.join([program, *sys.argv[1:]])


@contextmanager
def stage_lock(run_root: Path, stage: str) -> Iterator[Path]:
    """Hold ``stage``'s lock of the run in ``run_root`` for the ``with`` block (re-entrant in a process).

    Raises:
        RunBusyError: Another process holds it; the message names that process.
    """
    path = lock_path(run_root, stage)
    if os.environ.get("RANK", "0") != "0":  # a launched run's other ranks: rank 0 holds it for them
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(run_root, stage, path, _read_holder(fd)) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        _held[key] = 1
        try:
            yield path
        finally:
            del _held[key]
            os.ftruncate(fd, 0)  # still held: nobody reads a holder that is gone
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Hold the lock file ``path``, waiting for another holder to let go: for short critical sections
    (two evals of one checkpoint moving their results into place), not for whole stages."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}  # the holder is between taking the lock and writing its name


def _busy(run_root: Path, stage: str, path: Path, holder: dict) -> RunBusyError:
    who = (
        f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
        f"{holder.get('command')}"
        if holder
        else "a process that has not written its name yet"
    )
    return RunBusyError(
        f"Another vlmppo process is running {stage} on run {run_root} ({who}).",
        hint=f"Wait for it to finish or stop it; use another run.name to run beside it. (Lock: {path}; it is "
        "released when that process ends, however it ends.)",
    )


def locked(stage: str) -> Callable:
    """Decorate an engine function ``f(cfg, ...)`` to hold ``stage``'s lock of ``cfg``'s run while it runs."""

    def wrap(func: Callable) -> Callable:
        @functools.wraps(func)
        def run(cfg, *args, **kwargs):
            from vlmppo.config import run_dir

            with stage_lock(run_dir(cfg), stage):
                return func(cfg, *args, **kwargs)

        return run

    return wrap
