"""Checkpoint folders are read back whole before `last` points at them, damage is found and named, and
`keep_last` deletes only what no resume needs. Real files throughout (safetensors written by safetensors)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from vlmppo.checkpoints import (
    prune_checkpoints,
    read_meta,
    require_whole,
    resolve_checkpoint,
    resume_auto,
    save_checkpoint,
)
from vlmppo.errors import CheckpointError
from vlmppo.integrity import checkpoint_problem, safetensors_problem


def write_weights(folder, value: float = 1.0):
    save_file({"w": torch.full((64, 64), value)}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text('{"r": 8}\n')
    (folder / "sub").mkdir()
    (folder / "sub" / "state.bin").write_bytes(b"x" * 100)


def save(root, step, value: float = 1.0, **kwargs):
    return save_checkpoint(root, step, {"stage": "ppo"}, lambda f: write_weights(f, value), **kwargs)


def truncate(path, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


def test_every_file_of_a_checkpoint_gets_the_same_mode_as_a_new_file(tmp_path):
    # safetensors writes 0o600; the rest of a checkpoint gets 0o666 minus the umask (0o644 usually).
    umask = os.umask(0o022)
    try:
        ckpt = save(tmp_path, 1)
    finally:
        os.umask(umask)
    modes = {
        p.relative_to(ckpt).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in ckpt.rglob("*") if p.is_file()
    }
    assert "adapter_model.safetensors" in modes and "vlmppo.json" in modes
    assert set(modes.values()) == {0o644}, modes


def test_the_record_holds_size_and_sha256_of_every_file(tmp_path):
    ckpt = save(tmp_path, 1)
    files = read_meta(ckpt)["files"]
    assert sorted(files) == ["adapter_config.json", "adapter_model.safetensors", "sub/state.bin"]
    assert files["sub/state.bin"]["size"] == 100
    assert checkpoint_problem(ckpt, hashes=True) is None


def test_a_truncated_safetensors_file_is_named_with_its_problem(tmp_path):
    ckpt = save(tmp_path, 1)
    weights = ckpt / "adapter_model.safetensors"
    truncate(weights, weights.stat().st_size - 10)
    problem = checkpoint_problem(ckpt)
    assert str(weights) in problem and "bytes" in problem
    with pytest.raises(CheckpointError) as err:
        require_whole(ckpt)
    assert str(weights) in err.value.message and "--resume auto" in err.value.hint


def test_a_plain_peft_folder_without_a_record_is_checked_by_its_safetensors_header(tmp_path):
    write_weights(tmp_path)
    assert safetensors_problem(tmp_path / "adapter_model.safetensors") is None
    truncate(tmp_path / "adapter_model.safetensors", 7)
    assert "shorter than a safetensors header" in checkpoint_problem(tmp_path)
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        resolve_checkpoint(tmp_path, str(tmp_path))


def test_a_changed_byte_is_found_by_the_hash_check_only(tmp_path):
    ckpt = save(tmp_path, 1)
    state = ckpt / "sub" / "state.bin"
    state.write_bytes(b"y" * 100)  # same size, other content
    assert checkpoint_problem(ckpt) is None
    assert "SHA-256" in checkpoint_problem(ckpt, hashes=True)


def test_resume_auto_skips_damaged_newer_checkpoints_and_says_why(tmp_path):
    save(tmp_path, 1)
    save(tmp_path, 2)
    third = save(tmp_path, 3)
    (third / "sub" / "state.bin").unlink()
    truncate(tmp_path / "000002" / "adapter_model.safetensors", 100)
    path, notes = resume_auto(tmp_path, "ppo")
    assert path.name == "000001"
    assert len(notes) == 2
    assert "000003" in notes[0] and f"{third / 'sub/state.bin'} is missing" in notes[0]
    assert "000002/adapter_model.safetensors" in notes[1] and "bytes" in notes[1]


def test_resume_auto_with_every_checkpoint_damaged_says_so(tmp_path):
    assert resume_auto(tmp_path, "ppo") == (None, [])  # none yet: a fresh start
    truncate(save(tmp_path, 1) / "adapter_model.safetensors", 10)
    with pytest.raises(CheckpointError, match=r"Every PPO checkpoint in .* is damaged \(.*adapter_model"):
        resume_auto(tmp_path, "ppo")


def test_keep_last_keeps_the_newest_and_what_the_config_names(tmp_path):
    for step in range(1, 5):
        save(tmp_path, step)
    named = tmp_path / "000001"  # e.g. what ppo.init_from points to
    save(tmp_path, 5, keep_last=2, protect=[named])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000001", "000004", "000005", "last"]
    assert os.readlink(tmp_path / "last") == "000005"


def test_keep_last_leaves_checkpoints_numbered_after_the_one_just_written(tmp_path):
    # A run resumed from 2 (because 3 was damaged) writes 3 again; 4 is left for the run to replace.
    for step in (1, 2, 4):
        save(tmp_path, step)
    newest = save(tmp_path, 3, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000003", "000004", "last"]
    assert prune_checkpoints(tmp_path, 1, newest=newest) == []


def test_a_checkpoint_whose_weights_do_not_read_back_never_becomes_last(tmp_path):
    save(tmp_path, 1)

    def torn(folder):
        write_weights(folder)
        truncate(folder / "adapter_model.safetensors", 50)  # what a failing disk can leave

    with pytest.raises(CheckpointError, match="does not read back"):
        save_checkpoint(tmp_path, 2, {}, torn)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000001", "last"]
    assert os.readlink(tmp_path / "last") == "000001"


def test_a_damaged_record_is_reported_as_such(tmp_path):
    ckpt = save(tmp_path, 1)
    (ckpt / "vlmppo.json").write_text(json.dumps(["not", "an", "object"]))
    assert "vlmppo.json is not a valid JSON object" in checkpoint_problem(ckpt)
