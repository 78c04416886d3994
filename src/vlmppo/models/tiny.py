"""Random models built from code, and model-path resolution (``tiny:<family>``, ``small:<family>``, folders,
hub ids).

``tiny:`` models (~150-200k parameters) exercise every code path in tests on a CPU; ``small:`` ones (~14M,
168 px images; `vlmppo.models.adapter.SMALL`) are for learning real tasks from scratch on a GPU
(docs/learning.md). A built model is saved with ``save_pretrained`` like any checkpoint and then loaded through the same code
as a real one, so tests on CPU exercise the real loading path. The cache is written atomically: a build
goes to a temp folder beside the final one, the completion marker is written last, then the folder is
renamed into place. A folder without the marker (an interrupted build) is removed and rebuilt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from vlmppo.errors import ModelError
from vlmppo.models.adapter import SIZES, TINY, BuildSize, FamilyAdapter
from vlmppo.models.families import FAMILIES, family_for_model_type

TINY_VERSION = "v2"  # bump when the tiny models change, so old caches are not reused
SMALL_VERSION = "v1"  # likewise for the small ones
_VERSIONS = {"tiny": TINY_VERSION, "small": SMALL_VERSION}
MARKER = "vlmppo-tiny-complete.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SEED = 0


def cache_dir() -> Path:
    """``$VLMPPO_CACHE`` or ``~/.cache/vlmppo`` (read at call time, so tests can redirect it)."""
    return Path(os.environ.get("VLMPPO_CACHE") or Path.home() / ".cache" / "vlmppo").expanduser()


def get_family(name: str) -> FamilyAdapter:
    """The adapter of a family name; ModelError listing the supported ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ModelError(
            f"Unknown model family '{name}'.", hint=f"Supported: {', '.join(FAMILIES)}."
        ) from None


def build_tiny_model(family: str, out_dir: Path, size: BuildSize = TINY) -> Path:
    """Build a random model of `family` (tiny unless `size` says otherwise) and save it (model, tokenizer,
    processor) to `out_dir`.

    Same seed, same model: the weights, tokenizer and processor depend only on the family, the size and the
    installed library versions. The completion marker is written last.

    Args:
        family: A registered family name, e.g. ``"qwen2-vl"``.
        out_dir: Folder to write; created if missing, must be empty if it exists.
        size: `vlmppo.models.adapter.TINY` or ``SMALL``.

    Returns:
        `out_dir`.

    Raises:
        ModelError: Unknown family, or `out_dir` exists and is not empty.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    adapter = get_family(family)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelError(
            f"'{out_dir}' exists and is not empty.", hint="Choose a new folder for the tiny model."
        )
    start = time.perf_counter()
    tokenizer = adapter.tiny_tokenizer()
    processor = adapter.tiny_processor(tokenizer, size)
    config = adapter.tiny_config(tokenizer, size)
    with torch.random.fork_rng(devices=[]):  # a fixed seed without disturbing the caller's RNG
        torch.manual_seed(_SEED)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(**adapter.tiny_generation_kwargs(tokenizer))
    seconds = round(time.perf_counter() - start, 3)
    marker = {"family": family, f"{size.name}_version": _VERSIONS[size.name], "build_seconds": seconds}
    save_build(model, processor, out_dir, marker)
    return out_dir


def built_size(path: str) -> BuildSize | None:
    """The size a ``tiny:<family>`` / ``small:<family>`` model path names; None for any other path."""
    prefix, sep, _ = path.partition(":")
    return SIZES.get(prefix) if sep else None


def tiny_model_dir(family: str, size: BuildSize = TINY) -> Path:
    """Where the built model of `family` and `size` is cached (built or not)."""
    return cache_dir() / size.name / f"{family}-{_VERSIONS[size.name]}"


def tiny_model_built(family: str, size: BuildSize = TINY) -> bool:
    """Whether that model is in the cache already (else its first use builds it)."""
    return (tiny_model_dir(family, size) / MARKER).is_file()


def tiny_model_path(family: str, size: BuildSize = TINY) -> Path:
    """The cached model of `family` and `size`, built on first use (atomically; see the module docstring)."""
    get_family(family)
    return cached_build(tiny_model_dir(family, size), lambda out: build_tiny_model(family, out, size))


def cached_build(final: Path, build, marker: str = MARKER) -> Path:
    """``final`` if it holds a complete build (its ``marker`` file), else ``build(temp)`` into a temp folder
    beside it, renamed into place. An interrupted build is never loaded.

    Processes that build the same model at once (the ranks of a launched run, test workers) take turns on a
    file lock beside it: without it one could remove, as an interrupted build, the folder another had just
    renamed into place and was loading. The first builds; the others then find its complete copy.
    """
    import fcntl

    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if (final / marker).is_file():  # built by another process while this one waited
            return final
        shutil.rmtree(final, ignore_errors=True)  # an interrupted build
        _remove_stale_temps(final)
        temp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            build(temp)
            os.rename(temp, final)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return final


def save_build(model, processor, out_dir: Path, marker: dict, marker_name: str = MARKER) -> None:
    """Save a freshly built model and its processor (tokenizer, chat template) to ``out_dir``, the
    completion marker (with the parameter count and library version) last."""
    import transformers

    out_dir.mkdir(parents=True, exist_ok=True)
    # transformers 5.x writes no model files on a rank other than 0 once torch.distributed is initialised
    # (``should_save_on_this_rank``), silently; a cache build is this process's own, whichever rank it is.
    model.should_save_on_this_rank = lambda is_main_process: is_main_process
    model.save_pretrained(out_dir)
    if not (out_dir / "config.json").is_file():
        raise RuntimeError(f"save_pretrained wrote no config.json into {out_dir}")
    processor.save_pretrained(out_dir)
    marker = {
        **marker,
        "transformers": transformers.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out_dir / marker_name).write_text(json.dumps(marker, indent=2) + "\n")


def _remove_stale_temps(final: Path, max_age_s: float = 3600.0) -> None:
    """Remove temp build folders of killed processes (a live build takes seconds, not an hour)."""
    for temp in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            if time.time() - temp.stat().st_mtime > max_age_s:
                shutil.rmtree(temp, ignore_errors=True)
        except OSError:
            pass  # another process removed it first


def read_model_type(folder: Path) -> str | None:
    """``model_type`` from ``folder/config.json`` (None when it has none)."""
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"'{folder}' has no config.json, so it is not a model checkpoint folder.")
    try:
        return json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ModelError(f"Could not read '{config}': {exc}") from exc


def check_supported(model_type: str | None, where: str) -> FamilyAdapter:
    """The adapter for `model_type`; ModelError naming what was found and what is supported."""
    adapter = family_for_model_type(model_type)
    if adapter is None:
        supported = ", ".join(f"{a.name} ({a.model_type})" for a in FAMILIES.values())
        raise ModelError(
            f"'{where}' is a '{model_type}' model, which vlmppo does not support.",
            hint=f"Supported families (config.json model_type): {supported}.",
        )
    return adapter


def resolve_model_path(path: str) -> Path | str:
    """Turn ``model.path`` into something ``from_pretrained`` can load.

    Args:
        path: ``tiny:<family>``, ``small:<family>``, a local checkpoint folder, or a hub id (``org/name``).

    Returns:
        A local folder (`Path`) for built models and existing folders; the hub id (`str`) otherwise.

    Raises:
        ModelError: Unknown family after ``tiny:``/``small:``; a local path that does not exist (and is not a hub id);
            a folder that is not a checkpoint or whose ``model_type`` is not a supported family.
    """
    size = built_size(path)
    if size is not None:
        return tiny_model_path(path.partition(":")[2], size)
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"Model path '{path}' is a file; expected a checkpoint folder.")
        check_supported(read_model_type(local), path)
        return local
    if _HUB_ID.match(path):
        return path
    raise ModelError(
        f"Model path '{path}' does not exist.",
        hint=f"Give a checkpoint folder, a hub id like 'Qwen/Qwen2-VL-2B-Instruct', or tiny:<family> / "
        f"small:<family> ({', '.join(FAMILIES)}).",
    )
