"""`vlmppo eval --compare DIR ...`: the metrics of several evaluations side by side, as rows of text (the
command layer draws the table)."""

from __future__ import annotations

import json
from pathlib import Path

from vlmppo.errors import DataError


def load_eval(path: str | Path) -> dict:
    """The ``metrics.json`` of an eval folder (or the file itself).

    Raises:
        DataError: The folder has no metrics.json, or it cannot be read.
    """
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(
            f"{path} is not an evaluation: it has no metrics.json.",
            hint="Pass folders written by `vlmppo eval`, e.g. runs/<name>/eval/ppo-000010.",
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        data["success_ci95"]  # noqa: B018 (a key every metrics.json has)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{file} is not a vlmppo eval metrics.json ({exc}).") from None
    return data


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


ROWS = (
    ("env", lambda m: m["env_id"]),
    ("policy", lambda m: m["policy"] + (f" ({m['decoding']})" if m.get("decoding") else "")),
    ("episodes", lambda m: str(m["episodes"])),
    ("success rate", lambda m: _pct(m["success_rate"])),
    ("95% CI", lambda m: f"{_pct(m['success_ci95'][0])} - {_pct(m['success_ci95'][1])}"),
    ("return mean", lambda m: f"{m['return_mean']:.3g}"),
    ("return median", lambda m: f"{m['return_median']:.3g}"),
    ("length mean", lambda m: f"{m['length_mean']:.3g}"),
    ("invalid actions", lambda m: _pct(m["invalid_action_rate"])),
    ("tokens / answer", lambda m: "-" if m["tokens_per_answer"] is None else f"{m['tokens_per_answer']:.1f}"),
    ("env steps / s", lambda m: f"{m['env_steps_per_s']:.1f}"),
)


def compare_rows(paths: list[str | Path]) -> tuple[list[str], list[list[str]]]:
    """(column headers, rows): one column per evaluation, one row per metric."""
    if len(paths) < 1:
        raise DataError(
            "--compare needs at least one eval folder.", hint="vlmppo eval --compare DIR1 DIR2 ..."
        )
    evals = [load_eval(p) for p in paths]
    headers = ["metric"] + [f"{Path(p).name}" for p in paths]
    rows = [[label, *(get(m) for m in evals)] for label, get in ROWS]
    return headers, rows
