"""Evaluation: run a checkpoint or a baseline, write metrics, captioned trajectories and a report.

``evaluate(cfg, policy=None)`` (runner.py) is what `vlmppo eval` calls; ``wilson_interval`` (metrics.py),
``write_trajectory`` (captions.py), ``write_report`` (report.py) and ``compare_rows`` (compare.py) are
its parts.
"""
