"""The evaluation report: ``report.md`` (images linked beside it) and ``report.html`` (one file, images
inline), with the metrics table, the agent against the expert and random baselines of the same run
(``runs/<name>/eval/expert`` and ``.../random``), the action histogram, learning curves from the run's
``ppo/metrics.jsonl`` and ``sft/metrics.jsonl``, and the captioned trajectories.

Both files are rendered from one list of blocks, so they always show the same content.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from vlmppo.eval.metrics import BASELINES
from vlmppo.io import atomic_write_text

# Learning curves: (metric key, panel title). The x axis is env steps for PPO and steps for SFT.
PPO_CURVES = (
    ("rollout/success_rate", "success rate (sampled rollouts)"),
    ("eval/success_rate", "greedy success rate (ppo.eval_every)"),
    ("rollout/ep_return_mean", "episode return"),
    ("rollout/invalid_action_rate", "invalid-action rate"),
    ("train/approx_kl", "approx. KL"),
    ("train/policy_loss", "policy loss"),
    ("train/value_loss", "value loss"),
)


PPO_CURVES_NOTE = (
    "PPO's curves come from its training rollouts: answers sampled at ppo.temperature, success and return "
    "over the most recent finished episodes at each update. They are not the greedy success measured above; "
    "the greedy success rate panel, where there is one, is PPO's own greedy eval of the policy it was training "
    "(ppo.eval_every), on the eval seeds."
)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def read_metrics_rows(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl; a torn last line (a run still writing) is ignored."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _series(rows: list[dict], key: str, x_keys: tuple[str, ...]) -> tuple[list, list]:
    xs, ys = [], []
    for i, row in enumerate(rows):
        y = row.get(key)
        if isinstance(y, (int, float)) and not isinstance(y, bool) and math.isfinite(y):
            x = next((row[k] for k in x_keys if isinstance(row.get(k), (int, float))), i + 1)
            xs.append(x)
            ys.append(y)
    return xs, ys


def is_fraction(key: str) -> bool:
    """Metrics that are rates or accuracies: their axis spans 0..1, so 0.9 never looks like a collapse."""
    return key.endswith("_rate") or key.endswith("acc")


def curve_figure(rows: list[dict], panels, x_keys: tuple[str, ...], title: str):
    """A matplotlib figure with a panel per metric that the rows have; None if none has data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [(key, label, *_series(rows, key, x_keys)) for key, label in panels]
    data = [d for d in data if d[2]]
    if not data:
        return None
    cols = min(3, len(data))
    nrows = -(-len(data) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, (key, label, xs, ys) in zip(axes.flat, data, strict=False):
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=1.5)
        ax.set_title(label, fontsize=11)
        ax.set_xlabel(x_keys[0].replace("_", " "), fontsize=9)
        if is_fraction(key):
            ax.set_ylim(0.0, 1.0)
            ax.margins(y=0)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(data) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def plot_curves(rows: list[dict], panels, x_keys: tuple[str, ...], title: str, out: Path) -> bool:
    """`curve_figure` saved to ``out``; False (nothing written) if no panel has data."""
    import matplotlib.pyplot as plt

    fig = curve_figure(rows, panels, x_keys, title)
    if fig is None:
        return False
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def plural(n: int, word: str) -> str:
    """``1 step``, ``2 steps``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def shown_path(path, run_root: Path) -> str:
    """A path as the report shows it: relative to the runs folder (``<run>/ppo/metrics.jsonl``), never an
    absolute path of the machine that wrote it; a path outside the runs folder by its name alone."""
    path, base = Path(path).absolute(), Path(run_root).absolute().parent
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.name


def plot_actions(counts: dict[str, int], invalid_rate: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(counts)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) + 2), 3.0))
    ax.bar(range(len(labels)), [counts[a] for a in labels], color="#4477aa")
    ax.set_xticks(
        range(len(labels)),
        labels,
        rotation=30 if len(labels) > 4 else 0,
        ha="right" if len(labels) > 4 else "center",
    )
    ax.set_ylabel("steps")
    ax.set_title(f"actions taken (invalid answers: {100 * invalid_rate:.1f}%)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# Which rate a reader may put beside the paper's figures (RL4VLM counts an episode when its return is > 0).
RATES_NOTE = (
    "Success is RL4VLM's definition (the episode's return is > 0): this is the rate to compare with the "
    "paper's. Solved is the task's own goal (e.g. NumberLine reached the target, even after a step back)."
)


def metrics_table(m: dict) -> list[list[str]]:
    low, high = m["success_ci95"]
    rows = [
        [
            "success rate (return > 0, as RL4VLM)",
            f"{_pct(m['success_rate'])} ({m['successes']}/{m['episodes']})",
        ],
        ["95% CI (Wilson)", f"{_pct(low)} - {_pct(high)}"],
    ]
    if "solved_rate" in m:  # metrics.json written before solved was measured has none
        s_low, s_high = m["solved_ci95"]
        rows.append(
            [
                "solved rate (the task's goal)",
                f"{_pct(m['solved_rate'])} ({m['solved']}/{m['episodes']}; {_pct(s_low)} - {_pct(s_high)})",
            ]
        )
    return [
        *rows,
        ["return: mean / median", f"{m['return_mean']:.3g} / {m['return_median']:.3g}"],
        ["episode length: mean", f"{m['length_mean']:.3g}"],
        ["invalid-action rate", _pct(m["invalid_action_rate"])],
        ["tokens per answer", _num(m["tokens_per_answer"])],
        ["env steps", str(m["env_steps"])],
        ["wall time", f"{m['wall_s']:.1f} s ({m['env_steps_per_s']:.1f} env steps/s)"],
    ]


# The env settings that define the task a success rate is measured on (n_envs, rendering and prompt
# style change neither the expert's nor the random policy's episodes).
TASK_KEYS = ("id", "max_episode_steps", "kwargs")


def _manifest_env(folder: Path) -> dict | None:
    """The ``env`` section of an eval folder's manifest.json (None when it has none that can be read)."""
    try:
        env = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["config"]["env"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return env if isinstance(env, dict) else None


def read_baselines(run_root: Path, env: dict | None) -> tuple[dict[str, dict], list[str]]:
    """The expert/random evaluations of this run that were played on the same task as ``env``.

    Args:
        run_root: ``runs/<name>``; a baseline is ``<run_root>/eval/<expert|random>/metrics.json``.
        env: This evaluation's ``env`` config section (a dict); None compares the env id only.

    Returns:
        ``{policy: metrics}`` of the usable baselines, and one sentence per baseline left out (unreadable,
        or played with other env settings).
    """
    found, notes = {}, []
    for policy in BASELINES:
        folder = Path(run_root) / "eval" / policy
        if not (folder / "metrics.json").is_file():
            continue
        try:
            metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
            metrics["success_ci95"]  # noqa: B018 (a key every metrics.json has)
        except (ValueError, KeyError, TypeError):
            where = shown_path(folder / "metrics.json", run_root)
            notes.append(f"{where} cannot be read, so the {policy} baseline is left out.")
            continue
        theirs = _manifest_env(folder)
        if env is None or theirs is None:
            differ = [] if env is None or metrics.get("env_id") == env.get("id") else ["id"]
        else:
            differ = [k for k in TASK_KEYS if theirs.get(k) != env.get(k)]
        if differ:
            notes.append(
                f"The {policy} baseline in {shown_path(folder, run_root)} was played with other env settings "
                f"({', '.join('env.' + k for k in differ)}), so it is left out: evaluate it again."
            )
            continue
        found[policy] = metrics
    return found, notes


def _relation(agent: dict, other: dict, whose: str) -> str:
    """How the agent's 95% interval lies against a baseline's."""
    (a_low, a_high), (b_low, b_high) = agent["success_ci95"], other["success_ci95"]
    if a_low > b_high:
        return f"lies above {whose}"
    if a_high < b_low:
        return f"lies below {whose}"
    return f"overlaps {whose}"


def standing(agent: dict, baselines: dict[str, dict]) -> str:
    """One or two sentences placing the agent's success rate between the random and expert baselines."""
    rate = agent["success_rate"]
    parts = [f"{p} {_pct(baselines[p]['success_rate'])}" for p in BASELINES if p in baselines]
    text = f"The agent succeeds in {_pct(rate)} of its episodes (baselines: {', '.join(parts)})"
    if "expert" in baselines and "random" in baselines:
        low, high = baselines["random"]["success_rate"], baselines["expert"]["success_rate"]
        if rate < low:
            text += ", below random"
        elif high > low:
            text += f", {100 * (rate - low) / (high - low):.0f}% of the way from random to expert"
    whose = {"random": "random's", "expert": "the expert's"}
    relations = [_relation(agent, baselines[p], whose[p]) for p in ("random", "expert") if p in baselines]
    text += f". Its 95% interval {' and '.join(relations)}"
    if any(r.startswith("overlaps") for r in relations):
        text += " (where the intervals overlap, these episodes cannot tell the two apart)"
    return text + "."


def baseline_blocks(metrics: dict, run_root: Path, env: dict | None) -> list[tuple]:
    """The "Against the baselines" section of a checkpoint's report."""
    baselines, notes = read_baselines(run_root, env)
    blocks: list[tuple] = [("h2", "Against the baselines")]
    if baselines:
        entries = [(metrics["name"], metrics)] + [
            (f"{p} (baseline)", baselines[p]) for p in BASELINES if p in baselines
        ]
        rows = [
            [label, str(m["episodes"]), _pct(m["success_rate"]),
             f"{_pct(m['success_ci95'][0])} - {_pct(m['success_ci95'][1])}", f"{m['return_mean']:.3g}",
             _pct(m["invalid_action_rate"])]
            for label, m in entries
        ]  # fmt: skip
        header = ["policy", "episodes", "success rate", "95% CI (Wilson)", "mean return", "invalid-action rate"]  # fmt: skip
        blocks += [("table", header, rows), ("p", standing(metrics, baselines))]
    blocks += [("p", note) for note in notes]
    missing = [p for p in BASELINES if p not in baselines]
    if missing:
        commands = " and ".join(f"`vlmppo eval --preset P --policy {p}`" for p in missing)
        blocks.append(
            (
                "p",
                f"No {' or '.join(missing)} baseline of this task in {shown_path(Path(run_root) / 'eval', run_root)}: "
                f"run {commands} "
                "with this run's preset P and overrides (or `--config` with the run's config.yaml) to show "
                "where the agent stands between them.",
            )
        )
    return blocks


def _blocks(metrics: dict, run_root: Path, out: Path, trajectories, env: dict | None) -> list[tuple]:
    m = metrics
    what = (
        shown_path(m["checkpoint"], run_root)
        if m["policy"] == "checkpoint"
        else f"the {m['policy']} baseline"
    )
    blocks: list[tuple] = [
        ("h1", f"Evaluation: {m['name']} on {m['env_id']}"),
        (
            "p",
            f"Evaluated {what}; {plural(m['episodes_per_seed'], 'episode')} per seed x seeds {m['seeds']}"
            + (f", {m['decoding']} decoding" if m["decoding"] else "")
            + (", with the checkpoint's value head" if m["value_head"] else "")
            + ".",
        ),
        ("table", ["metric", "value"], metrics_table(m)),
        ("p", RATES_NOTE),
    ]
    if m["policy"] == "checkpoint":
        blocks += baseline_blocks(m, run_root, env)
    if len(m["per_seed"]) > 1:
        rows = [
            [s, _pct(b["success_rate"]), f"{_pct(b['success_ci95'][0])} - {_pct(b['success_ci95'][1])}",
             f"{b['return_mean']:.3g}", f"{b['length_mean']:.3g}"]
            for s, b in m["per_seed"].items()
        ]  # fmt: skip
        blocks += [("h2", "Per seed"), ("table", ["seed", "success", "95% CI", "return", "length"], rows)]
    blocks += [("h2", "Actions"), ("img", "actions.png", "histogram of the actions taken")]
    plot_actions(m["action_counts"], m["invalid_action_rate"], out / "actions.png")

    blocks.append(("h2", "Learning curves"))
    found = False
    for stage, panels, x_keys in (
        ("ppo", PPO_CURVES, ("env_steps", "update")),
        ("sft", None, ("step", "global_step")),
    ):
        path = Path(run_root) / stage / "metrics.jsonl"
        if not path.is_file():
            continue
        rows = read_metrics_rows(path)
        if panels is None:  # SFT: every numeric loss / accuracy / lr series it logged
            keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))})
            panels = [(k, k) for k in keys if any(w in k for w in ("loss", "acc", "lr"))]
        if plot_curves(
            rows, panels, x_keys, f"{stage} ({shown_path(path, run_root)})", out / f"curves-{stage}.png"
        ):
            if stage == "ppo":
                blocks.append(("p", PPO_CURVES_NOTE))
            blocks.append(("img", f"curves-{stage}.png", f"{stage} learning curves"))
            found = True
    if not found:
        blocks.append(
            (
                "p",
                f"No training metrics in {shown_path(Path(run_root) / 'ppo', run_root)} or "
                f"{shown_path(Path(run_root) / 'sft', run_root)} (no metrics.jsonl), "
                "so no learning curves.",
            )  # fmt: skip
        )
    blocks.append(("h2", "Trajectories"))
    if not trajectories:
        blocks.append(("p", "None drawn (eval.trajectories=0)."))
    for t in trajectories:
        blocks.append(
            (
                "h3",
                f"{t.name}: {'success' if t.success else 'failure'}, return {t.ret:+g}, {plural(t.steps, 'step')}",
            )
        )
        blocks.append(("img", t.gif, f"{t.name} animated ({t.frames} frames)"))
        blocks.append(("frames", t.png, f"all {t.frames} frames of {t.name}"))
    return blocks


def _markdown(blocks) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})\n")
        elif kind == "frames":
            out.append(f"All frames in one picture: [{block[1]}]({block[1]})\n")
        elif kind == "table":
            _, header, rows = block
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(row) + " |" for row in rows]
            out.append("")
    return "\n".join(out)


def _inline(folder: Path, relative: str) -> str:
    data = (folder / relative).read_bytes()
    mime = "image/gif" if relative.endswith(".gif") else "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _html(blocks, folder: Path) -> str:
    esc = html.escape
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{esc(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{esc(block[1])}</p>")
        elif kind == "frames":
            image = f'<img src="{_inline(folder, block[1])}" alt="{esc(block[2])}">'
            body.append(f"<details><summary>{esc(block[2])}</summary>{image}</details>")
        elif kind == "img":
            body.append(f'<img src="{_inline(folder, block[1])}" alt="{esc(block[2])}">')
        elif kind == "table":
            _, header, rows = block
            head = "".join(f"<th>{esc(h)}</th>" for h in header)
            cells = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><tr>{head}</tr>{cells}</table>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%;display:block;margin:0.5em 0}"
    )
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>vlmppo eval</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(out: Path, metrics: dict, run_root: Path, trajectories, env: dict | None = None) -> Path:
    """Write ``report.md`` and ``report.html`` (and the plots they show) into ``out``.

    Args:
        env: The evaluation's ``env`` config section: a checkpoint's report compares it with the
            baselines' (None: the env id only).
    """
    out = Path(out)
    blocks = _blocks(metrics, run_root, out, trajectories, env)
    atomic_write_text(out / "report.md", _markdown(blocks))
    atomic_write_text(out / "report.html", _html(blocks, out))
    return out / "report.md"
