"""Is a checkpoint folder whole? Sizes and SHA-256 of its files, recorded when it is written and checked
before it is used.

``save_checkpoint`` records every file of a finished folder in its ``vlmppo.json`` (``files``:
``{relative path: {"size", "sha256"}}``) after reading each one back; a later reader compares sizes (cheap)
or hashes (``--resume``, which loads everything anyway) with that record. A ``*.safetensors`` file is also
checked on its own terms (its header must parse and its tensors must end where the file ends), which finds
a truncated file in folders written before the record existed or by other tools (a plain PEFT adapter).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from vlmppo.errors import CheckpointError
from vlmppo.io import default_file_mode, file_sha256

META = "vlmppo.json"
# A safetensors header is a JSON object of at most 100 MB (the format's own limit).
_MAX_HEADER = 100_000_000


def files_of(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` except ``vlmppo.json``, in a stable order."""
    folder = Path(folder)
    found = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p.name != META]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def seal_files(folder: Path) -> dict[str, dict]:
    """Make the files of a just-written checkpoint durable, readable alike, and recorded.

    Each file gets the mode a new file gets here (``0o666`` minus the umask: safetensors writes ``0o600``,
    the rest of the folder is ``0o644``), is read back whole (its SHA-256) and synced to disk.

    Returns:
        ``{relative path: {"size": bytes, "sha256": hex}}``, for ``vlmppo.json``.

    Raises:
        CheckpointError: A ``*.safetensors`` file does not read back as one (named in the message).
    """
    folder = Path(folder)
    records = {}
    for path in files_of(folder):
        problem = safetensors_problem(path) if path.suffix == ".safetensors" else None
        if problem:
            raise CheckpointError(
                f"Checkpoint file {path} does not read back after writing: {problem}.",
                hint="Check the disk (free space, errors in `dmesg`); earlier checkpoints are intact.",
            )
        finish_file(path)
        records[path.relative_to(folder).as_posix()] = {
            "size": path.stat().st_size,
            "sha256": file_sha256(path),
        }
    return records


def finish_file(path: Path) -> None:
    """Give ``path`` the mode of a new file here and sync it to disk."""
    os.chmod(path, default_file_mode())
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (truncated, or not one at all), or None.

    The format: 8 bytes little-endian header length ``n``, a JSON header of ``n`` bytes mapping tensor names
    to ``data_offsets``, then the data, which must end exactly where the file ends.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            return f"its header claims {n} bytes but the file has {size} (truncated?)"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "its header is not valid JSON (truncated or overwritten?)"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        return f"its tensors need {expected} bytes but the file has {size} (truncated?)"
    return None


def checkpoint_problem(folder: Path, *, hashes: bool = False) -> str | None:
    """Why the checkpoint in ``folder`` cannot be used, naming the file; None when it is whole.

    Args:
        folder: A vlmppo checkpoint (with ``vlmppo.json``) or a plain PEFT/transformers folder.
        hashes: Also compare every file's SHA-256 with the record (reads every byte; sizes otherwise).
    """
    folder = Path(folder)
    meta_file = folder / META
    records: dict = {}
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            records = meta.get("files") or {}
        except (ValueError, AttributeError, UnicodeDecodeError):
            return f"{meta_file} is not a valid JSON object"
    for rel, record in records.items():
        path = folder / rel
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != record["size"]:
            return f"{path} has {size} bytes, but {record['size']} were written"
        if hashes and file_sha256(path) != record["sha256"]:
            return f"{path} is not the file that was written (its SHA-256 differs from the record)"
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            return f"{path} is damaged: {problem}"
    return None
