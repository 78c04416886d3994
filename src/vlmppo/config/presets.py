"""Preset discovery: the YAML files in the package's ``presets`` folder are the one registry.

In a wheel the presets are package data (``vlmppo/presets``); in a source checkout (editable install)
they are the top-level ``presets/`` folder.
"""

from __future__ import annotations

import difflib
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from vlmppo.errors import ConfigError


def presets_dir() -> Path:
    packaged = Path(__file__).resolve().parent.parent / "presets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "presets"


@dataclass(frozen=True)
class PresetInfo:
    name: str
    path: Path
    env_id: str
    family: str
    purpose: str


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def find_preset(name_or_path: str) -> Path:
    """A shipped preset by name, or a YAML file by path (a shipped name wins over a file of that name)."""
    candidate = Path(name_or_path).expanduser()
    is_yaml = candidate.suffix in (".yaml", ".yml")
    if not is_yaml and "/" not in name_or_path and (presets_dir() / f"{name_or_path}.yaml").is_file():
        return presets_dir() / f"{name_or_path}.yaml"
    if candidate.is_dir():
        raise ConfigError(
            f"Preset {candidate} is a folder, not a YAML file.",
            hint="Give a preset name (`vlmppo presets list`) or a .yaml file, e.g. a run's config.yaml.",
        )
    if candidate.is_file():
        if is_yaml:
            return candidate
        raise ConfigError(
            f"Preset {candidate} is not a YAML file (a preset ends in .yaml or .yml).",
            hint="Give a preset name (`vlmppo presets list`) or a .yaml file.",
        )
    if is_yaml or "/" in name_or_path:
        raise ConfigError(f"Preset file {candidate} does not exist.")
    names = preset_names()
    close = difflib.get_close_matches(name_or_path, names, n=4, cutoff=0.5)
    hint = f"Did you mean: {', '.join(close)}? " if close else ""
    raise ConfigError(
        f"Unknown preset '{name_or_path}'. {hint}`vlmppo presets list` shows all {len(names)} presets; "
        "a path to your own YAML file works too."
    )


def _purpose(path: Path) -> str:
    """The first header comment line after the preset's name, e.g. '# numberline-qwen: PPO on ...'."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("# ").strip()
        if text.startswith(f"{path.stem}:"):
            return text.split(":", 1)[1].strip()
    return ""


def list_presets() -> list[PresetInfo]:
    infos = []
    for name in preset_names():
        path = presets_dir() / f"{name}.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        infos.append(
            PresetInfo(
                name=name,
                path=path,
                env_id=str(data.get("env", {}).get("id", "")),
                family=str(data.get("model", {}).get("family", "")),
                purpose=_purpose(path),
            )
        )
    return infos


def copy_preset(name: str, dest: Path, *, force: bool = False) -> Path:
    """Copy a preset to ``dest`` (a file, or a folder to put ``<name>.yaml`` in) for the user to edit."""
    src = find_preset(name)
    target = dest / src.name if dest.is_dir() else dest
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists; pass --force to overwrite it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    return target
