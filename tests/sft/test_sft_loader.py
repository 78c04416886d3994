"""SFT's micro-batches collated ahead in worker processes (sft/loader.py): the same batches, losses and counts
as collating in the training process."""

from __future__ import annotations

import json

import pytest
from tests.sft.helpers import sft_config, write_color_dataset

from vlmppo.sft import train_sft
from vlmppo.sft.loader import loader_workers


def losses(result) -> list[float]:
    rows = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["sft/loss"] for row in rows if "sft/loss" in row]


@pytest.mark.e2e
def test_worker_processes_give_the_same_losses_and_truncation_counts_as_the_training_process(tmp_path):
    train, val = write_color_dataset(tmp_path, n_train=10, n_val=2)
    runs = {}
    for workers in (0, 2):
        # max_length cuts most answers: the truncated count is collated in the workers and must come back.
        cfg = sft_config(tmp_path, train, val, "sft.max_steps=6", "sft.grad_accum=2", "sft.max_length=170",
                         f"sft.loader_workers={workers}", f"run.name=w{workers}")  # fmt: skip
        runs[workers] = train_sft(cfg)
    assert losses(runs[0]) == losses(runs[2]) and len(losses(runs[0])) == 6
    assert runs[0].truncated == runs[2].truncated > 0


def test_workers_default_to_none_on_the_cpu_and_to_the_cores_on_a_gpu():
    assert loader_workers(None, "cpu") == 0
    assert 0 <= loader_workers(None, "cuda") <= 8
    assert loader_workers(3, "cpu") == 3
