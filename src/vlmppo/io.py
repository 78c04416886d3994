"""Files the stages write and read: atomic writes, crash-safe JSONL, manifests.

Rules: a file is either complete or absent (write to a temp file in the same folder, fsync, rename);
JSONL files are appended line by line and a torn last line (a crash mid-write) is cut off on resume;
a corrupt line in the middle is reported with its file and line number.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vlmppo.errors import DataError


def _default_file_mode() -> int:
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
        os.fchmod(fd, _default_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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


class JsonlWriter:
    """Append JSON lines durably (flush + fsync per batch) so an interrupted run keeps what it wrote."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write_many(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self._file.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    """Write ``<folder>/manifest.json``: inputs with their hashes, config, versions, git SHA, and counts."""
    from vlmppo.sysinfo import git_sha, package_versions

    manifest = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {name: {"path": str(p), "sha256": file_sha256(p)} for name, p in inputs.items()},
        "config": config,
        "versions": package_versions(),
        "git_sha": git_sha(),
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
