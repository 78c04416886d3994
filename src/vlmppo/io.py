"""Files the stages write and read: atomic writes, crash-safe JSONL, manifests.

Rules: a file is either complete or absent (write to a temp file in the same folder, fsync, rename);
JSONL files are appended in whole lines: a write that fails (a full disk) is cut back to the last whole
line and reported with the file's path, and a torn last line (a power cut mid-write) is cut off when the
file is opened again; a corrupt line in the middle is reported with its file and line number.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vlmppo.errors import DataError, StorageError


def default_file_mode() -> int:
    """What ``open()`` would give a new file: 0o666 minus the umask (mkstemp's 0o600 would hide metrics,
    reports and manifests from the rest of a shared cluster's group)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, a quota: name the file (the OSError names none)
            raise storage_error(path, exc) from None
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written temp folder into place, replacing an older one if present."""
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def storage_error(path: Path, exc: BaseException) -> StorageError:
    """A StorageError that names ``path``, the reason, and what is left on its file system."""
    reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return StorageError(
        f"Could not write {path}: {'; '.join([reason, *space_notes(Path(path))])}.",
        hint="Free disk space (or raise the quota / file-size limit) or fix the folder's permissions; "
        "files already written are intact.",
    )


def space_notes(path: Path) -> list[str]:
    """What limits writing at ``path``: the free space of its file system, and a file-size limit if set."""
    import resource

    notes = []
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    with contextlib.suppress(OSError):
        notes.append(f"{_size(shutil.disk_usage(folder).free)} free on that file system")
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        notes.append(f"this process may write no file over {_size(soft)} (ulimit -f)")
    return notes


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class JsonlWriter:
    """Append whole JSON lines durably (fsync per batch), so an interrupted run keeps what it wrote.

    A batch goes to the file in one ``write``; if that fails (a full disk, a quota), the file is cut back
    to its size before the batch, so it never ends in half a line, and a StorageError names the file.
    A torn last line that an earlier process left (a power cut mid-write) is cut off on open, so the
    lines appended after it stay readable.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl_tail(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)  # umask applies

    def write_many(self, rows: Iterable[dict]) -> None:
        data = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows).encode()
        if not data:
            return
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)  # whole lines only: drop the part of the batch that got in
            raise storage_error(self.path, exc) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def truncate_jsonl(path: Path, key: str, last: int) -> int:
    """Keep the lines of ``path`` whose ``key`` is at most ``last`` (a torn tail goes too); returns the
    lines kept. What a resumed run does to the logs the interrupted run wrote past its checkpoint."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # torn tail of a killed run
        if row.get(key, 0) <= last:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return len(kept)


def repair_jsonl_tail(path: Path) -> int:
    """Cut a torn last line (no trailing newline, or not valid JSON) left by a crash; returns bytes cut."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data:
        return 0
    keep = len(data)
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
    else:
        last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[last_start:])
        except json.JSONDecodeError:
            keep = last_start
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
    return len(data) - keep


def read_jsonl(path: Path, *, on_error: str = "stop", skipped: list | None = None) -> Iterator[dict]:
    """Yield the JSON objects of a JSONL file.

    Args:
        on_error: "stop" raises DataError naming the file and line; "skip" records (line, reason) in
            ``skipped`` and goes on.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"a JSON {type(row).__name__}, not an object")
            except ValueError as exc:
                reason = str(exc).splitlines()[0]
                if on_error == "skip":
                    if skipped is not None:
                        skipped.append((number, reason))
                    continue
                raise DataError(
                    f"{path}, line {number}: not a valid JSON object ({reason}).",
                    hint="Fix or delete that line, or pass preprocess.on_error=skip to skip corrupt lines.",
                ) from None
            yield row


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, *, stage: str, config: dict, inputs: dict[str, Path], **extra: Any) -> dict:
    """Write ``<folder>/manifest.json``: inputs with their hashes, config, versions, git SHA, the command that
    ran (None outside the CLI), and counts."""
    from vlmppo.sysinfo import command_line, git_sha, package_versions

    manifest = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {name: {"path": str(p), "sha256": file_sha256(p)} for name, p in inputs.items()},
        "config": config,
        "versions": package_versions(),
        "git_sha": git_sha(),
        "command": command_line(),
        **extra,
    }
    atomic_write_json(Path(folder) / "manifest.json", manifest)
    return manifest


def require_file(path: Path, *, stage: str, produced_by: str) -> Path:
    """A stage's input must exist and be non-empty; otherwise say which stage to run first."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        state = "is empty" if path.exists() else "does not exist"
        raise DataError(
            f"`vlmppo {stage}` needs {path}, which {state}.",
            hint=f"Run `vlmppo {produced_by}` with the same preset first.",
        )
    return path
