"""SFT checkpoints: --resume auto steps over a damaged one and says so; keep_last deletes only what no
resume and no ppo.init_from needs."""

from __future__ import annotations

from tests.sft.helpers import sft_config, write_color_dataset

from vlmppo.sft import train_sft


def test_resume_auto_skips_a_checkpoint_with_a_truncated_adapter_and_says_which_and_why(tmp_path):
    train, val = write_color_dataset(tmp_path)
    first = train_sft(sft_config(tmp_path, train, val, "sft.max_steps=2", "sft.save_every=1"))
    damaged = first.checkpoint / "adapter_model.safetensors"
    assert first.checkpoint.name == "000002"
    with open(damaged, "r+b") as f:
        f.truncate(100)
    again = train_sft(sft_config(tmp_path, train, val, "sft.max_steps=3", "sft.save_every=1"), resume="auto")
    assert again.resumed_from.name == "000001" and again.steps == 3
    assert any("skipped" in note and str(damaged) in note for note in again.notes), again.notes


def test_keep_last_keeps_the_newest_and_the_checkpoint_ppo_starts_from(tmp_path):
    train, val = write_color_dataset(tmp_path)
    first_step = tmp_path / "runs/probe-color-tiny/sft/checkpoints/000001"
    cfg = sft_config(
        tmp_path, train, val, "sft.max_steps=4", "sft.save_every=1", "sft.keep_last=1",
        f"ppo.init_from={first_step}",
    )  # fmt: skip
    train_sft(cfg)
    kept = sorted(p.name for p in first_step.parent.iterdir())
    assert kept == ["000001", "000004", "final", "last"]
