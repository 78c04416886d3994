"""The tables (markdown + json) and curves (PNG) of one learning protocol run (bench/learning.py)."""

from __future__ import annotations

import json
from pathlib import Path

ROWS = ("expert", "random", "weak sft", "weak + ppo", "strong sft")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _ci(value) -> str:
    return "-" if not value else f"[{100 * value[0]:.1f}, {100 * value[1]:.1f}]"


def results_table(report: dict) -> list[str]:
    lines = ["| policy | success % | 95% CI | solved % | return | length | invalid % | episodes |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label in ROWS:
        r = report["results"].get(label)
        if r is None:
            lines.append(f"| {label} | not run | | | | | | |")
            continue
        ret = "-" if r.get("return_mean") is None else f"{r['return_mean']:.2f}"
        length = "-" if r.get("length_mean") is None else f"{r['length_mean']:.1f}"
        lines.append(f"| {label} | {_pct(r.get('success_rate'))} | {_ci(r.get('success_ci95'))} | "
                     f"{_pct(r.get('solved_rate'))} | {ret} | {length} | {_pct(r.get('invalid_action_rate'))} | "
                     f"{r.get('episodes', '-')} |")  # fmt: skip
    return lines


def curve_table(report: dict) -> list[str]:
    """The curve protocol's greedy evals of the long SFT run's checkpoints (bench/learning_curve.py)."""
    if not report.get("curve"):
        return []
    lines = ["| SFT step | samples | success % | 95% CI | invalid % |", "|---|---|---|---|---|"]
    for p in report["curve"]:
        lines.append(f"| {p['step']} | {p.get('samples', '-')} | {_pct(p.get('success_rate'))} | "
                     f"{_ci(p.get('success_ci95'))} | {_pct(p.get('invalid_action_rate'))} |")  # fmt: skip
    return [*lines, ""]


def ppo_eval_table(report: dict) -> list[str]:
    """PPO's own greedy evals of the policy it is training (``ppo.eval_every``): the RL run's greedy curve,
    update 0 being the start policy."""
    points = [r for r in report.get("ppo") or [] if r.get("eval/success_rate") is not None]
    if not points:
        return []
    lines = ["Greedy evals during PPO (`ppo.eval_every`, `ppo.eval_episodes` per eval seed):", "",
             "| update | env steps | greedy success % | return | invalid % | episodes | rollout success % |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in points:
        ret = "-" if r.get("eval/return_mean") is None else f"{r['eval/return_mean']:.2f}"
        lines.append(f"| {r.get('update')} | {r.get('env_steps')} | {_pct(r['eval/success_rate'])} | {ret} | "
                     f"{_pct(r.get('eval/invalid_action_rate'))} | {r.get('eval/episodes', '-')} | "
                     f"{_pct(r.get('rollout/success_rate'))} |")  # fmt: skip
    return [*lines, ""]


def stage_table(report: dict) -> list[str]:
    lines = ["| stage | wall s | rc | time-boxed | command |", "|---|---|---|---|---|"]
    for s in report["stages"]:
        lines.append(f"| {s['stage']} | {s['wall_s']} | {s['rc']} | {'yes' if s['time_boxed'] else ''} | "
                     f"`{s['command']}` |")  # fmt: skip
    return lines


def markdown(report: dict) -> str:
    sft = report.get("sft", {})
    ppo = report.get("ppo") or []
    lines = [f"# Learning: {report['task']} ({report['preset']}){' — DRY run, not a result' if report['dry'] else ''}",
             "", f"GPU: {report.get('gpu')}; run.seed {report['seed']}; eval seeds as in the preset (greedy); "
             f"budget {report['budget_s']:.0f} s, wall {report.get('wall_s')} s.", "",
             f"Data: {report.get('data', {})}", "", *results_table(report), "", *curve_table(report)]  # fmt: skip
    if report.get("weak_start"):
        lines += [f"Weak start (from the curve): {report['weak_start'].get('checkpoint')}", ""]
    for name in ("weak", "strong"):
        s = sft.get(name) or {}
        rate = s.get("samples_per_s")
        lines.append(f"- SFT {name}: {s.get('steps')} steps, {s.get('samples')} samples, "
                     f"{'-' if rate is None else f'{rate:.0f}'} samples/s, last loss {s.get('last_loss')}, "
                     f"val action acc {s.get('val_action_acc')}")  # fmt: skip
    if ppo:
        last = ppo[-1]
        lines.append(f"- PPO from weak: {last.get('update')} updates, {last.get('env_steps')} env steps, "
                     f"last rollout success {last.get('rollout/success_rate')}")  # fmt: skip
        lines += ["", *ppo_eval_table(report)]
    lines += [
        "",
        *stage_table(report),
        "",
        "Every command also got: `" + " ".join(report.get("common_overrides", [])) + "`",
    ]
    if report.get("notes"):
        lines += ["", *[f"- note: {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def curves(report: dict, path: Path) -> str | None:
    """SFT loss against samples (both starts) and PPO's rollout success against env steps, with the evaluated
    policies as lines. Returns why there is no figure, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no figure: {exc}"
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in report.get("sft_curves", {}).items():
        rows = [r for r in rows if "sft/loss" in r]
        left.plot([r["samples"] for r in rows], [r["sft/loss"] for r in rows], label=f"SFT {name}")
    left.set(xlabel="training samples", ylabel="token loss", yscale="log", title="SFT")
    left.legend()
    ppo = report.get("ppo") or []
    for key, style, label in (("rollout/success_rate", "-", "PPO rollouts (sampled)"),
                              ("eval/success_rate", "o-", "PPO greedy evals (ppo.eval_every)")):  # fmt: skip
        points = [r for r in ppo if r.get(key) is not None]
        if points:
            right.plot([r["env_steps"] for r in points], [r[key] for r in points], style, label=label)
    for label, style in (("expert", "g--"), ("random", "r--"), ("weak sft", "k:"), ("strong sft", "b:"),
                         ("weak + ppo", "m-.")):  # fmt: skip
        r = report["results"].get(label)
        if r and r.get("success_rate") is not None:
            right.axhline(r["success_rate"], color=style[0], linestyle=style[1:], label=f"{label} (eval)")
    right.set(xlabel="env steps", ylabel="success rate", ylim=(-0.02, 1.02), title="PPO from the weak start")
    if not ppo:  # no PPO ran (e.g. no checkpoint under WEAK_MAX): only the evaluated policies, as lines
        right.set(title="Greedy success (no PPO run)", xlabel="", xticks=[])
    right.legend(fontsize=7)
    figure.suptitle(f"{report['preset']} on {report.get('gpu')}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


def write_report(report: dict, stem: Path) -> None:
    """``<stem>.md``, ``<stem>.json`` and ``<stem>.png``."""
    problem = curves(report, stem.with_suffix(".png"))
    if problem:
        report.setdefault("notes", []).append(problem)
    report.pop("sft_curves", None)  # in the figure; the json keeps the summaries and PPO's rows
    stem.with_suffix(".md").write_text(markdown(report))
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(stem.with_suffix(".md").read_text(), flush=True)
