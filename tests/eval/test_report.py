"""The evaluation report as a reader meets it: no paths of the machine that wrote it, rates on a 0..1
axis, plain English ("1 step"), and PPO curves that say they come from sampled rollouts."""

from __future__ import annotations

import json

ROWS = [
    {"update": u, "env_steps": 32 * u, "rollout/success_rate": s, "train/value_loss": v}
    for u, s, v in ((1, 0.9, 0.4), (2, 1.0, 0.2), (3, 0.95, 0.1))
]


def test_rate_curves_span_0_to_1_and_the_others_follow_their_data():
    from vlmppo.eval.report import PPO_CURVES, curve_figure

    fig = curve_figure(ROWS, PPO_CURVES, ("env_steps", "update"), "ppo")
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert axes["success rate (sampled rollouts)"].get_ylim() == (0.0, 1.0)  # 0.9 is not a collapse
    assert "greedy success rate (ppo.eval_every)" not in axes  # no eval/* in these rows: no empty panel
    evaluated = [*ROWS, {"update": 4, "env_steps": 128, "eval/success_rate": 0.5}]
    fig = curve_figure(evaluated, PPO_CURVES, ("env_steps", "update"), "ppo")
    greedy = next(ax for ax in fig.axes if ax.get_title() == "greedy success rate (ppo.eval_every)")
    assert greedy.get_ylim() == (0.0, 1.0) and list(greedy.lines[0].get_xdata()) == [128]
    low, high = axes["value loss"].get_ylim()
    assert low > 0.0 and high < 1.0
    assert axes["value loss"].get_xlabel() == "env steps"


def test_a_report_names_no_machine_path_says_1_step_and_marks_ppo_curves_as_sampled(tmp_path):
    from vlmppo.config import load_config
    from vlmppo.eval.runner import evaluate

    run = tmp_path / "probe-color-tiny"
    (run / "ppo").mkdir(parents=True)
    (run / "ppo/metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    overrides = [f"run.output_dir={tmp_path}", "eval.episodes=1", "eval.trajectories=1"]
    result = evaluate(load_config("probe-color-tiny", overrides=overrides), policy="expert")
    markdown = (result.out_dir / "report.md").read_text()
    page = (result.out_dir / "report.html").read_text()
    for text in (markdown, page):
        assert str(tmp_path) not in text
    assert "### episode-000: success, return +1, 1 step\n" in markdown  # Color episodes are one step
    assert "1 episode per seed" in markdown
    assert "PPO's curves come from its training rollouts: answers sampled at ppo.temperature" in markdown
    assert "![ppo learning curves](curves-ppo.png)" in markdown
