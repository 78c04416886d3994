"""Hub ids in ``model.path``: the local Hugging Face cache first, the hub only when it answers at once.

Left to transformers, an id that is not cached on a machine without network costs ~25 s of retries (five, with
backoff) and ten lines of messages before an ``OSError``. Here: a complete snapshot in the cache is loaded as the
local folder it is (no network at all); otherwise ``HF_HUB_OFFLINE=1`` is an immediate error, and without it one
request with a short timeout and no retries decides between "download as transformers does" and one clear error.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlmppo.errors import ModelError

PROBE_TIMEOUT_S = 5.0
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set, read now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import is_offline_mode

    flags = (os.environ.get(name, "").strip().upper() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return is_offline_mode() or any(flag in ("1", "ON", "YES", "TRUE") for flag in flags)


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of ``repo_id`` (default revision) when it holds the config and every weight
    file, else None."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or a partial snapshot (huggingface_hub's own IncompleteSnapshotError)
        return None
    if not (folder / "config.json").is_file():
        return None
    if any((folder / name).is_file() for name in _WEIGHTS):
        return folder
    for index in _INDEXES:
        if (folder / index).is_file():
            import json

            shards = set(json.loads((folder / index).read_text()).get("weight_map", {}).values())
            return folder if all((folder / shard).is_file() for shard in shards) else None
    return None


def _fetch_hint(repo_id: str) -> str:
    return (
        f"Fetch it where there is network with `hf download {repo_id}` (the same HF_HOME cache; "
        f"`huggingface-cli download` before huggingface_hub 1.0), or download it to a folder "
        f"(`hf download {repo_id} --local-dir DIR`) and set model.path=DIR."
    )


def probe_hub(repo_id: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """One request for the repo's ``config.json``, no retries; ModelError when the hub does not answer or has
    no such (accessible) repo."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=timeout)
    except GatedRepoError:
        raise ModelError(
            f"model.path '{repo_id}' is a gated model on the Hugging Face hub and this machine may not read it.",
            hint=f"Accept its license on huggingface.co, then `hf auth login` (or set HF_TOKEN). {_fetch_hint(repo_id)}",
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"model.path '{repo_id}' is neither a local folder nor a model on the Hugging Face hub "
            "(or a private one this machine has no token for).",
            hint="Check the spelling (org/name), or log in with `hf auth login` for a private model.",
        ) from None
    except Exception as exc:  # no network, DNS, proxy, timeout, hub down
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"model.path '{repo_id}' is not in the local Hugging Face cache and the hub cannot be reached "
            f"({reason}).",
            hint=_fetch_hint(repo_id),
        ) from None


def locate_hub_model(repo_id: str) -> Path | str:
    """Where to load hub id ``repo_id`` from: its complete cached snapshot (a folder), else the id itself once
    the hub answered (transformers then downloads it into the cache).

    Raises:
        ModelError: Not cached and ``HF_HUB_OFFLINE=1``, or not cached and the hub unreachable (within
            ``PROBE_TIMEOUT_S``), or no such accessible repo; the message names the id and how to fetch it.
    """
    folder = cached_snapshot(repo_id)
    if folder is not None:
        return folder
    if offline():
        raise ModelError(
            f"model.path '{repo_id}' is not (completely) in the local Hugging Face cache, and HF_HUB_OFFLINE=1 "
            "forbids downloading it.",
            hint=_fetch_hint(repo_id),
        )
    probe_hub(repo_id)
    return repo_id
