"""What changed between a recorded config and this run's: one rule for the pipeline's stage identity, a data
stage's manifest and the resume warnings of SFT and PPO.

A record written by an older vlmppo lacks the settings added since. Such a setting counts as unchanged while it
holds its default, since a new setting's default keeps the old behaviour (the changelog says when one does not):
upgrading vlmppo alone then neither re-runs a pipeline's finished stages nor warns on resume. A setting the record
has but this version no longer knows is not compared, and the settings of ``WHERE_IT_STOPS`` (where a run stops,
not what it makes) are never changes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from vlmppo.config.loader import WHERE_IT_STOPS

_MISSING = object()


@lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    from vlmppo.config.schema import Config

    return Config().model_dump(mode="json")


def _diff(old: Any, new: Any, default: Any, path: str, out: list[str]) -> None:
    if not (isinstance(old, dict) and isinstance(new, dict)):
        if old != new:
            out.append(f"{path}: {old!r} -> {new!r}")
        return
    for key, value in new.items():
        below = default.get(key, _MISSING) if isinstance(default, dict) else _MISSING
        if key in old:
            _diff(old[key], value, below, f"{path}.{key}", out)
        elif below is _MISSING or value != below:  # newer than the record, and not at its default
            out.append(f"{path}.{key}: (not recorded) -> {value!r}")


def section_changes(recorded: dict, now: dict, sections: tuple[str, ...]) -> list[str]:
    """``key: old -> new`` for each setting of ``sections`` that differs between two config dumps (JSON mode,
    as ``Config.model_dump(mode="json")`` or a saved config.yaml gives them), by the rule above; sorted."""
    changes: list[str] = []
    for section in sections:
        quiet = WHERE_IT_STOPS.get(section, ())
        old = {k: v for k, v in (recorded.get(section) or {}).items() if k not in quiet}
        new = {k: v for k, v in (now.get(section) or {}).items() if k not in quiet}
        _diff(old, new, _defaults().get(section, _MISSING), section, changes)
    return sorted(changes)
