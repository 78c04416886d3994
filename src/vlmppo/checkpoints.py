"""Checkpoints shared by `sft`, `ppo` and `eval`: written atomically, found by `--resume auto`, loadable
with plain transformers/peft.

A checkpoint folder ``<stage>/checkpoints/NNNNNN/`` is itself a PEFT adapter folder
(``adapter_config.json`` + ``adapter_model.safetensors``; or, for full fine-tuning, a
``save_pretrained`` model folder) with the processor files beside it, plus:

- ``vlmppo.json``: what it is (stage, family, base model, step counters, config, versions, git SHA) and
  ``files``, the size and SHA-256 of every other file, read back after writing (`vlmppo.integrity`).
  Written last: a folder without it is incomplete and never loaded;
- ``value_head.safetensors`` (PPO) and ``trainer_state.pt`` (optimizer, scheduler, RNG states).

``checkpoints/last`` is a symlink to the newest complete checkpoint, replaced atomically once that
checkpoint has been read back whole. A checkpoint damaged later (a truncated file) is refused with one
message naming the file; ``--resume auto`` falls back to the newest whole one and says what it skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from vlmppo.errors import CheckpointError
from vlmppo.integrity import META, checkpoint_problem, finish_file, seal_files

# `ppo.init_from`, `--ckpt` and `--resume` take these names besides a folder.
KEYWORDS = ("last", "sft", "ppo")


def save_checkpoint(
    root: Path,
    step: int,
    meta: dict,
    write_files: Callable[[Path], None],
    *,
    keep_last: int | None = None,
    protect: Iterable[Path] = (),
) -> Path:
    """Write checkpoint ``root/NNNNNN`` atomically, read it back, and point ``root/last`` at it.

    Args:
        root: The ``checkpoints`` folder.
        step: The counter that names the folder (optimizer steps for SFT, updates for PPO).
        meta: Saved as ``vlmppo.json`` (stage, family, base_model, counters, config, ...).
        write_files: Writes the model/adapter, processor and state files into the folder it is given.
        keep_last: Then delete numbered checkpoints older than the newest ``keep_last`` (None keeps all);
            see `prune_checkpoints`.
        protect: Checkpoints never deleted by ``keep_last`` (what ``ppo.init_from`` or ``eval.ckpt`` name).

    Raises:
        CheckpointError: The folder cannot be written (disk full, permissions: the message says why and how
            much space is left) or a file does not read back (named); the previous checkpoints and ``last``
            are left as they were.
    """
    from vlmppo.sysinfo import command_line, git_sha, package_versions

    root = Path(root)
    final = root / f"{step:06d}"
    tmp = root / f".{step:06d}.tmp-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write_files(tmp)
        full_meta = {
            "format": 1,
            "step": step,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": package_versions(),
            "git_sha": git_sha(),
            "command": command_line(),
            **meta,
            "files": seal_files(tmp),
        }
        (tmp / META).write_text(json.dumps(full_meta, indent=2, default=str) + "\n")
        finish_file(tmp / META)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        link_tmp = root / f".last.tmp-{os.getpid()}"
        link_tmp.unlink(missing_ok=True)
        link_tmp.symlink_to(final.name)
        os.replace(link_tmp, root / "last")
    except CheckpointError:  # a file that does not read back (seal_files names it)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (OSError, *_writer_errors()) as exc:
        error = _write_failure(exc, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise error from None
    if keep_last:
        prune_checkpoints(root, keep_last, newest=final, protect=protect)
    return final


def _write_failure(exc: BaseException, final: Path) -> CheckpointError:
    """The CheckpointError of a failed save: the folder, why, and what limits writing there (the free
    space, a file-size limit): safetensors and ``torch.save`` raise their own errors without an errno or
    a file name ("unexpected pos 64 vs 0"), and remove or leave their partial file, so the folder is what
    can be named for certain."""
    from vlmppo.io import space_notes

    reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return CheckpointError(
        f"Could not write checkpoint {final}: {'; '.join([reason, *space_notes(final)])}.",
        hint="Free disk space (or raise the quota / file-size limit) or fix permissions of the run directory; "
        "earlier checkpoints are intact.",
    )


def prune_checkpoints(
    root: Path, keep_last: int, *, newest: Path, protect: Iterable[Path] = ()
) -> list[Path]:
    """Delete numbered checkpoints beyond the ``keep_last`` newest, up to and including ``newest``.

    What a resume needs is never deleted: ``newest`` (just written and read back whole, and what ``last``
    points to) is always among those kept, and the ``protect``ed ones stay too. Checkpoints numbered
    above ``newest`` (left by a run that was resumed from an earlier one) are not touched: the run
    replaces them as it gets there.

    Returns:
        The folders deleted.
    """
    keep = {Path(p).resolve() for p in protect}
    older = [p for p in complete_checkpoints(root) if int(p.name) <= int(newest.name)]
    doomed = [p for p in older[:-keep_last] if p.resolve() not in keep and p.name != newest.name]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def _writer_errors() -> tuple[type[BaseException], ...]:
    """What the weight writers raise on a failed write instead of OSError: safetensors its own error,
    ``torch.save`` a RuntimeError ("unexpected pos ..." on a full disk)."""
    from safetensors import SafetensorError

    return (SafetensorError, RuntimeError)


def complete_checkpoints(root: Path) -> list[Path]:
    """Numbered checkpoint folders that have their ``vlmppo.json`` (i.e. finished writing), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.isdigit() and p.is_dir() and (p / META).is_file()]
    return sorted(found, key=lambda p: int(p.name))


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def resume_auto(root: Path, stage: str) -> tuple[Path | None, list[str]]:
    """What ``--resume auto`` continues from: the newest complete checkpoint in ``root`` whose files all
    match their recorded sizes and hashes, or None when there is none yet (a fresh start).

    Returns:
        ``(checkpoint or None, notes)``: a note per newer checkpoint skipped, naming the file and the problem.

    Raises:
        CheckpointError: Every checkpoint in ``root`` is damaged (starting over would mix with them).
    """
    skipped: list[tuple[Path, str]] = []
    for path in reversed(complete_checkpoints(root)):
        problem = checkpoint_problem(path, hashes=True)
        if problem is None:
            return path, [f"--resume auto skipped {p} ({why})" for p, why in skipped]
        skipped.append((path, problem))
    if skipped:
        raise CheckpointError(
            f"Every {stage.upper()} checkpoint in {root} is damaged (the newest: {skipped[0][1]}).",
            hint="Delete the folder to start the run over, or resume from a copy of a whole checkpoint.",
        )
    return None, []


def require_whole(path: Path, *, hashes: bool = False) -> Path:
    """``path`` if its files are whole; else one CheckpointError naming the damaged file."""
    problem = checkpoint_problem(path, hashes=hashes)
    if problem is not None:
        raise CheckpointError(
            f"Checkpoint {path} cannot be used: {problem}.",
            hint="Use an earlier checkpoint (`--resume auto` falls back to the newest whole one by itself), "
            "or delete this folder.",
        )
    return path


def protected_checkpoints(cfg) -> list[Path]:
    """Checkpoint folders the config names (``ppo.init_from``, ``eval.ckpt``, ``collect.ckpt``), which
    ``keep_last`` must not delete."""
    specs = (cfg.ppo.init_from, cfg.eval.ckpt, cfg.collect.ckpt)
    return [Path(s).expanduser() for s in specs if s and s not in KEYWORDS and Path(s).expanduser().is_dir()]


def read_meta(path: Path) -> dict:
    meta_file = Path(path) / META
    return json.loads(meta_file.read_text()) if meta_file.is_file() else {}


def resolve_checkpoint(
    run_root: Path,
    spec: str,
    *,
    key: str | None = None,
    choices: str = "last, sft, ppo or a folder path",
    hashes: bool = False,
) -> Path:
    """A checkpoint from a user's ``--ckpt``/``--resume``/``init_from``: ``last|sft|ppo`` or a path.

    ``sft``/``ppo``: the newest complete checkpoint of that stage in this run; ``last``: PPO's if any,
    else SFT's. A path may be a vlmppo checkpoint, a PEFT adapter folder or a transformers model folder.

    Args:
        key: The option or config key ``spec`` came from, named in errors (e.g. ``ppo.init_from``).
        choices: What ``key`` accepts, for the hint.
        hashes: Check every file's SHA-256 against the checkpoint's record (else sizes and headers).

    Raises:
        CheckpointError: No such checkpoint, not a checkpoint folder, or one with a damaged file.
    """
    stages = {"sft": ["sft"], "ppo": ["ppo"], "last": ["ppo", "sft"]}
    given = f" ({key}={spec})" if key else ""
    if spec in stages:
        for stage in stages[spec]:
            found = latest_checkpoint(Path(run_root) / stage / "checkpoints")
            if found is not None:
                return require_whole(found, hashes=hashes)
        raise CheckpointError(
            f"No complete {'/'.join(stages[spec])} checkpoint in {run_root}{given}.",
            hint=f"Train first (`vlmppo {stages[spec][-1]}`), or give a checkpoint path.",
        )
    path = Path(spec).expanduser()
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist{given}.", hint=f"Use {choices}.")
    path = path.resolve()
    if not any((path / f).is_file() for f in (META, "adapter_config.json", "config.json")):
        raise CheckpointError(
            f"{path} is not a checkpoint{given}: it has no vlmppo.json, adapter_config.json or config.json.",
            hint="Point at a checkpoints/NNNNNN folder, a PEFT adapter folder or a transformers model folder.",
        )
    return require_whole(path, hashes=hashes)


def check_family(path: Path, family: str) -> dict:
    """The checkpoint's meta; CheckpointError if it was trained from another model family."""
    meta = read_meta(path)
    if meta.get("family") and meta["family"] != family:
        raise CheckpointError(
            f"Checkpoint {path} was trained from a {meta['family']} model, but model.family is {family!r}.",
            hint=f"Use a preset for {meta['family']}, or a checkpoint of a {family} model.",
        )
    return meta


# Keys of a transformers config that name or date a model rather than describe it.
_BOOKKEEPING = {
    "_name_or_path",
    "name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_commit_hash",
}


def _architecture(config) -> dict:
    def strip(d: dict) -> dict:
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if k not in _BOOKKEEPING}

    return strip(config.to_dict())


def _same_place(a: str, b: str) -> bool:
    from vlmppo.models.tiny import resolve_model_path

    ra, rb = resolve_model_path(a), resolve_model_path(b)
    if isinstance(ra, Path) and isinstance(rb, Path):
        return ra.resolve() == rb.resolve()
    return str(ra) == str(rb)


def base_model_for(path: Path, meta: dict, model_cfg) -> str:
    """The base model the adapter in checkpoint ``path`` goes on.

    The base it was trained on (``meta["base_model"]``) when that is ``model.path``; ``model.path`` when
    the recorded base is another folder with the same architecture (a model moved or copied) or is no
    longer there (the adapter's shapes are checked when it loads).

    Raises:
        CheckpointError: ``model.path`` is a different model from the one the checkpoint was trained on.
    """
    from vlmppo.models.loading import load_model_config

    recorded = meta.get("base_model")
    if not recorded or _same_place(recorded, model_cfg.path):
        return recorded or model_cfg.path
    wanted = load_model_config(model_cfg)
    trained = load_model_config(model_cfg.model_copy(update={"path": recorded}))
    if wanted is None or trained is None:
        return model_cfg.path
    a, b = _architecture(trained), _architecture(wanted)
    if a != b:
        differs = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise CheckpointError(
            f"Checkpoint {path} was trained on {recorded}, but model.path is {model_cfg.path}, another "
            f"model (its config differs in {', '.join(differs[:4])}).",
            hint=f"Use model.path={recorded} with this checkpoint, or start a new run (another run.name).",
        )
    return model_cfg.path


def load_for_inference(cfg, spec: str, *, device: str = "cpu"):
    """The model of a checkpoint (``last|sft|ppo`` or a path), frozen, for generation.

    A PEFT adapter folder is applied to its base model (``vlmppo.json``'s ``base_model``, else the
    config's ``model.path``); a transformers model folder is loaded as it is.

    Returns:
        A ``LoadedModel`` whose ``model`` is in eval mode with no trainable weights.
    """
    from vlmppo.config import run_dir
    from vlmppo.models import load_model

    path = resolve_checkpoint(run_dir(cfg), spec)
    meta = check_family(path, cfg.model.family)
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        base_cfg = cfg.model.model_copy(update={"path": base_model_for(path, meta, cfg.model), "lora": None})
        loaded = load_model(base_cfg, device=device, for_training=False)
        loaded.model = PeftModel.from_pretrained(loaded.model, str(path), is_trainable=False).eval()
        return loaded
    return load_model(
        cfg.model.model_copy(update={"path": str(path), "lora": None}), device=device, for_training=False
    )


def load_policy_for_inference(cfg, spec: str | None, *, device: str = "cpu"):
    """A batched text generator over a checkpoint's model (for collect, labelling and eval)."""
    from vlmppo.errors import ConfigError
    from vlmppo.models.generation import Generator

    if not spec:
        raise ConfigError(
            "collect.policy=checkpoint needs a checkpoint: pass --ckpt PATH (or last, sft, ppo)."
        )
    return Generator(load_for_inference(cfg, spec, device=device), device, decoder=cfg.model.decoder)
