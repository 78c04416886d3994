"""collect → label → preprocess from the CLI on a tiny preset, checked line by line; resume; bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.helpers import run_cli

pytestmark = pytest.mark.e2e  # collect, label and preprocess from the CLI

PRESET = "numberline-tiny"


def stage(tmp_path: Path, *args: str, name: str = "run"):
    return run_cli(*args, "--preset", PRESET, f"run.output_dir={tmp_path}", f"run.name={name}")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """One collect → label(action) → label(score) → preprocess run shared by the checks below."""
    root = tmp_path_factory.mktemp("pipeline")
    outs = [
        stage(root, "collect", "collect.episodes=12"),
        stage(root, "label"),
        stage(root, "label", "--mode", "score"),
        stage(root, "preprocess", "preprocess.val_fraction=0.25", "preprocess.dedupe=false"),
    ]
    for out in outs:
        assert out.returncode == 0, out.stderr + out.stdout
    return root / "run", outs


def test_collect_writes_one_line_per_step_with_frames_and_manifest(pipeline_run):
    run, outs = pipeline_run
    steps = lines(run / "collect/episodes.jsonl")
    assert sorted({s["episode"] for s in steps}) == list(range(12))
    required = {
        "episode",
        "step",
        "frame",
        "prompt",
        "state",
        "action",
        "action_text",
        "answer",
        "reward",
        "terminated",
        "truncated",
    }
    for s in steps:
        assert required <= s.keys()
        assert (run / "collect" / s["frame"]).is_file()
        assert s["state"]["current"] != s["state"]["target"]
    for episode in range(12):
        ep = sorted((s for s in steps if s["episode"] == episode), key=lambda s: s["step"])
        assert [s["step"] for s in ep] == list(range(len(ep)))
        assert ep[-1]["terminated"] or ep[-1]["truncated"]
        assert not any(s["terminated"] or s["truncated"] for s in ep[:-1])
        assert (run / "collect" / ep[-1]["next_frame"]).is_file()  # the final frame
    manifest = json.loads((run / "collect/manifest.json").read_text())
    assert manifest["counts"]["episodes"] == 12 and manifest["counts"]["steps"] == len(steps)
    assert manifest["success_rate"] == 1.0  # the NumberLine expert always wins
    assert "success rate 100.0%" in outs[0].stdout


def test_expert_labels_cover_every_step_in_both_modes(pipeline_run):
    run, _ = pipeline_run
    steps = lines(run / "collect/episodes.jsonl")
    labels = lines(run / "label/labels.jsonl")
    actions = [r for r in labels if r["mode"] == "action"]
    scores = [r for r in labels if r["mode"] == "score"]
    assert len(actions) == len(scores) == len(steps)
    for lab in actions:
        assert lab["status"] == "ok" and lab["action"] in ("-", "+")
        assert json.loads(lab["raw"])["action"] == lab["action"]
    by_key = {(s["episode"], s["step"]): s for s in steps}
    for lab in actions:  # the expert collected these steps, so its labels agree with the recorded actions
        assert by_key[(lab["episode"], lab["step"])]["action_text"] == lab["action"]
    for lab in scores:
        assert 0 <= lab["score"] <= 10 and lab["reason"]


def test_preprocess_splits_by_episode_into_the_messages_images_layout(pipeline_run):
    run, outs = pipeline_run
    train, val = lines(run / "data/train.jsonl"), lines(run / "data/val.jsonl")
    assert train and val
    assert not ({r["episode"] for r in train} & {r["episode"] for r in val})
    assert len({r["episode"] for r in val}) == 3  # 25% of 12 episodes
    assert len(train) + len(val) == len(lines(run / "collect/episodes.jsonl"))  # every step kept
    for row in train + val:
        user, assistant = row["messages"]
        assert user["role"] == "user" and user["content"][0] == {"type": "image"}
        assert assistant["role"] == "assistant"
        answer = json.loads(assistant["content"][0]["text"])
        assert answer["action"] == row["action"] and answer["thoughts"]
        assert (run / "data" / row["images"][0]).resolve().is_file()
    assert "train examples" in outs[3].stdout


def test_dedupe_drops_identical_frame_answer_pairs(tmp_path):
    assert stage(tmp_path, "collect", "collect.episodes=12").returncode == 0
    assert stage(tmp_path, "label").returncode == 0
    out = stage(tmp_path, "preprocess")
    assert out.returncode == 0 and "dropped: duplicate (frame, answer)" in out.stdout
    rows = lines(tmp_path / "run/data/train.jsonl") + lines(tmp_path / "run/data/val.jsonl")
    identities = [(r["images"][0], r["messages"][1]["content"][0]["text"]) for r in rows]
    frames = [(tmp_path / "run/data" / img).read_bytes() for img, _ in identities]
    assert len(set(zip(frames, [a for _, a in identities], strict=True))) == len(rows)


def test_sft_files_load_with_hf_datasets(pipeline_run):
    datasets = pytest.importorskip("datasets")
    run, _ = pipeline_run
    ds = datasets.load_dataset("json", data_files={"train": str(run / "data/train.jsonl")})["train"]
    assert len(ds) == len(lines(run / "data/train.jsonl"))
    assert ds[0]["messages"][1]["role"] == "assistant"


def test_collect_killed_mid_run_resumes_without_loss_or_duplicates(tmp_path):
    args = [
        sys.executable,
        "-m",
        "vlmppo",
        "collect",
        "--preset",
        PRESET,
        f"run.output_dir={tmp_path}",
        "run.name=killed",
        "collect.episodes=300",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    steps_file = tmp_path / "killed/collect/episodes.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not steps_file.exists() or steps_file.stat().st_size < 20_000):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed/collect/manifest.json").exists(), "the run finished before it was killed"
    kept = {s["episode"] for s in lines(steps_file)}
    assert 0 < len(kept) < 300
    assert stage(tmp_path, "collect", "collect.episodes=300", name="killed").returncode == 0
    assert stage(tmp_path, "collect", "collect.episodes=300", name="straight").returncode == 0

    def by_key(name):
        return {(s["episode"], s["step"]): s for s in lines(tmp_path / name / "collect/episodes.jsonl")}

    resumed, straight = by_key("killed"), by_key("straight")
    assert len(resumed) == len(lines(steps_file))  # no duplicated lines
    assert resumed == straight  # same seeds per episode: identical data, nothing lost


def test_a_resumed_collect_counts_the_kept_episodes_successes_like_the_new_ones(tmp_path):
    from vlmppo.config import load_config
    from vlmppo.data.collect import collect

    cfg = load_config(
        PRESET, overrides=[f"run.output_dir={tmp_path}", "collect.episodes=8", "collect.epsilon=0"]
    )

    class Interrupted(Exception):
        pass

    def stop_after_5(done, total):
        if done == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        collect(cfg, on_episode=stop_after_5)
    result = collect(cfg)
    assert result.resumed == 5 and result.episodes == 8
    assert result.success_rate == 1.0  # the exact expert solves every episode, kept or new
    manifest = json.loads((tmp_path / PRESET / "collect/manifest.json").read_text())
    assert manifest["success_rate"] == 1.0 and manifest["counts"]["resumed_episodes"] == 5


def test_stage_without_its_input_says_which_stage_to_run_first(tmp_path):
    out = stage(tmp_path, "label")
    assert out.returncode == 1 and "Run `vlmppo collect`" in out.stderr
    out = stage(tmp_path, "preprocess")
    assert out.returncode == 1 and "Run `vlmppo collect`" in out.stderr


def test_corrupt_line_is_reported_with_file_and_line_or_skipped(tmp_path):
    assert stage(tmp_path, "collect", "collect.episodes=4").returncode == 0
    assert stage(tmp_path, "label").returncode == 0
    labels = tmp_path / "run/label/labels.jsonl"
    rows = labels.read_text().splitlines()
    rows.insert(2, "{not json")
    labels.write_text("\n".join(rows) + "\n")
    out = stage(tmp_path, "preprocess")
    assert out.returncode == 1 and "labels.jsonl, line 3" in out.stderr and "Traceback" not in out.stderr
    out = stage(tmp_path, "preprocess", "preprocess.on_error=skip")
    assert out.returncode == 0 and "corrupt lines skipped" in out.stdout


def test_missing_frame_stops_or_is_dropped(tmp_path):
    assert stage(tmp_path, "collect", "collect.episodes=4").returncode == 0
    assert stage(tmp_path, "label").returncode == 0
    frame = next((tmp_path / "run/collect/frames/000001").glob("000.png"))
    frame.unlink()
    out = stage(tmp_path, "preprocess")
    assert out.returncode == 1 and "000001/000.png" in out.stderr and "is missing" in out.stderr
    out = stage(tmp_path, "preprocess", "preprocess.on_error=skip")
    assert out.returncode == 0 and "frame missing" in out.stdout


def test_labels_for_another_env_are_refused(tmp_path):
    assert stage(tmp_path, "collect", "collect.episodes=2").returncode == 0
    out = run_cli("label", "--preset", "blackjack-tiny", f"run.output_dir={tmp_path}", "run.name=run")
    assert out.returncode == 1 and "gym_cards/NumberLine-v0" in out.stderr and "env.id" in out.stderr


def test_the_dataset_folder_is_self_contained_and_reads_from_anywhere(pipeline_run, tmp_path, monkeypatch):
    """data/ holds its images, so it can be copied away from the run and still read (our loader; the
    image paths load relative to it, as a TRL-style processor opens them)."""
    import shutil

    from transformers.image_utils import load_image

    from vlmppo.sft.dataset import load_sft_examples

    run, _ = pipeline_run
    copy = tmp_path / "copied-data"
    shutil.copytree(run / "data", copy)
    rows = lines(copy / "train.jsonl") + lines(copy / "val.jsonl")
    images = {row["images"][0] for row in rows}
    assert all(image.startswith("images/") and ".." not in image for image in images)
    assert {p.relative_to(copy).as_posix() for p in (copy / "images").rglob("*.png")} == images
    for row in rows:  # the collected frame of that step, byte for byte
        frame = run / f"collect/frames/{row['episode']:06d}/{row['step']:03d}.png"
        assert (copy / row["images"][0]).read_bytes() == frame.read_bytes()
    assert len(load_sft_examples(copy / "train.jsonl")) == len(lines(copy / "train.jsonl"))
    monkeypatch.chdir(copy)
    assert load_image(rows[0]["images"][0]).size == (300, 300)


def read_like_llamafactory(dataset_dir: Path, name: str) -> list[dict]:
    """A dataset as LLaMA-Factory's data/README.md documents the multimodal sharegpt layout (and its
    SharegptDatasetConverter checks it): roles alternate user/assistant, one <image> per image, image
    paths relative to the dataset folder (its default media_dir)."""
    info = json.loads((dataset_dir / "dataset_info.json").read_text())[name]
    assert info["formatting"] == "sharegpt"
    columns, tags = info["columns"], info["tags"]
    rows = lines(dataset_dir / info["file_name"])
    for row in rows:
        messages, images = row[columns["messages"]], row[columns["images"]]
        assert messages and len(messages) % 2 == 0
        for i, message in enumerate(messages):
            assert message[tags["role_tag"]] == tags["user_tag" if i % 2 == 0 else "assistant_tag"]
            assert isinstance(message[tags["content_tag"]], str)
        assert sum(m[tags["content_tag"]].count("<image>") for m in messages) == len(images) == 1
        assert all((dataset_dir / image).is_file() for image in images)
    return rows


def test_preprocess_format_llamafactory_writes_its_documented_sharegpt_dataset(pipeline_run):
    run, _ = pipeline_run
    args = ["preprocess", "preprocess.val_fraction=0.25", "preprocess.dedupe=false"]
    out = run_cli(
        *args, "--format", "llamafactory", "--preset", PRESET, f"run.output_dir={run.parent}", "run.name=run"
    )
    assert out.returncode == 0, out.stderr
    data = run / "data"
    for name, ours in (("vlmppo_train", "train.jsonl"), ("vlmppo_val", "val.jsonl")):
        theirs = read_like_llamafactory(data, name)
        mine = lines(data / ours)
        assert len(theirs) == len(mine)
        for row, example in zip(theirs, mine, strict=True):
            user, assistant = row["messages"]
            assert user["content"] == "<image>" + example["messages"][0]["content"][1]["text"]
            assert assistant["content"] == example["messages"][1]["content"][0]["text"]
            assert row["images"] == example["images"]
    # The default format removes them again: they would describe data that is no longer there.
    again = run_cli(*args, "--preset", PRESET, f"run.output_dir={run.parent}", "run.name=run")
    assert again.returncode == 0, again.stderr
    assert not (data / "dataset_info.json").exists() and not list(data.glob("llamafactory-*"))
