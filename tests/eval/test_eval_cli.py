"""`vlmppo eval` from the command line: a tiny checkpoint writes every file, `--compare`, and bad input."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from PIL import Image
from tests.helpers import run_cli

pytestmark = pytest.mark.e2e  # the eval CLI on a tiny checkpoint

PRESET = "numberline-tiny"


@pytest.fixture(scope="module")
def run_with_checkpoint(tmp_path_factory):
    """runs/run/ppo/checkpoints/000001: a LoRA adapter on the tiny Qwen2-VL and a value head, written
    with the same ``save_checkpoint`` (and files) as PPO."""
    from safetensors.torch import save_file

    from vlmppo.checkpoints import save_checkpoint
    from vlmppo.config import config_to_yaml, load_config
    from vlmppo.models import load_model
    from vlmppo.rl.policy import ValueHead, hidden_size

    out = tmp_path_factory.mktemp("eval-cli")
    cfg = load_config(PRESET, overrides=[f"run.output_dir={out}", "run.name=run"])
    loaded = load_model(cfg.model, for_training=True)
    head = ValueHead(hidden_size(loaded.model))

    def write(folder):
        loaded.model.save_pretrained(folder)
        loaded.processor.save_pretrained(folder)
        save_file(head.state_dict(), str(folder / "value_head.safetensors"))
        (folder / "config.yaml").write_text(config_to_yaml(cfg))

    meta = {"stage": "ppo", "family": cfg.model.family, "base_model": str(loaded.path), "update": 1}
    save_checkpoint(out / "run/ppo/checkpoints", 1, meta, write)
    return out


def common(out):
    return ["--preset", PRESET, f"run.output_dir={out}", "run.name=run"]


def links(markdown: str) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", markdown)


def test_eval_of_a_checkpoint_writes_every_file(run_with_checkpoint):
    out = run_with_checkpoint
    result = run_cli(
        "eval",
        *common(out),
        "--ckpt",
        "last",
        "--episodes",
        "3",
        "--seeds",
        "0,1",
        "eval.max_new_tokens=8",
        "eval.trajectories=2",
    )
    assert result.returncode == 0, result.stderr
    folder = out / "run/eval/ppo-000001"
    assert "ppo-000001: success" in result.stdout and "eval: episodes: 6/6" in result.stdout

    m = json.loads((folder / "metrics.json").read_text())
    assert m["episodes"] == 6 and m["seeds"] == [0, 1] and set(m["per_seed"]) == {"0", "1"}
    assert m["policy"] == "checkpoint" and m["value_head"] is True and m["decoding"] == "greedy"
    assert 0.0 <= m["success_ci95"][0] <= m["success_rate"] <= m["success_ci95"][1] <= 1.0
    assert 1 <= m["tokens_per_answer"] <= 8 and m["env_steps_per_s"] > 0 and m["wall_s"] > 0

    steps = [json.loads(line) for line in (folder / "episodes.jsonl").read_text().splitlines()]
    assert len(steps) == m["env_steps"]
    for row in steps:
        assert isinstance(row["answer"], str) and isinstance(row["value"], float)
        assert 1 <= row["answer_tokens"] <= 8 and isinstance(row["invalid"], bool)
        assert row["action"] in ("-", "+") and isinstance(row["reward"], float)
    lengths = {}
    for row in steps:
        lengths[row["episode"]] = lengths.get(row["episode"], 0) + 1
    assert len(lengths) == 6 and sum(lengths.values()) == len(steps)
    assert m["invalid_action_rate"] == pytest.approx(sum(r["invalid"] for r in steps) / len(steps))

    # Captioned trajectories for the first two episodes: GIF frames = steps + 1.
    for episode in (0, 1):
        gif = Image.open(folder / f"trajectories/episode-{episode:03d}.gif")
        assert gif.n_frames == lengths[episode] + 1
        assert (folder / f"trajectories/episode-{episode:03d}.png").is_file()
    assert not (folder / "trajectories/episode-002.gif").exists()

    report = (folder / "report.md").read_text()
    targets = links(report)
    assert "actions.png" in targets and "trajectories/episode-000.gif" in targets
    for target in targets:
        assert (folder / target).is_file(), target
    assert "No training metrics in" in report and "| success rate (return > 0, as RL4VLM) |" in report
    # Both rates, and which one compares with the paper's figures.
    assert "| solved rate (the task's goal) |" in report and "the rate to compare with the paper's" in report
    # No baseline in this run yet: the report says how to make them.
    assert "No expert or random baseline of this task" in report
    assert "`vlmppo eval --preset P --policy expert` and `vlmppo eval --preset P --policy random`" in report
    page = (folder / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    # Paths as seen from the runs folder, never this machine's absolute ones (the report travels).
    assert str(out) not in report and str(out) not in page
    assert "Evaluated run/ppo/checkpoints/000001;" in report
    assert (folder / "manifest.json").is_file()


def percent(cell: str) -> float:
    return float(cell.rstrip("%")) / 100


def table_rows(markdown: str) -> dict[str, list[str]]:
    """``| a | b | c |`` lines of a Markdown report, keyed by their first cell."""
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("| ")
    ]
    return {row[0]: row[1:] for row in rows}


def test_the_report_places_the_checkpoint_between_the_baselines_of_its_run(run_with_checkpoint):
    from vlmppo.config import load_config
    from vlmppo.eval.runner import evaluate

    out = run_with_checkpoint
    cfg = load_config(PRESET, overrides=[f"run.output_dir={out}", "run.name=ranked", "eval.episodes=40",
                                         "eval.trajectories=0", "env.n_envs=8"])  # fmt: skip
    baselines = {policy: evaluate(cfg, policy=policy).metrics for policy in ("expert", "random")}
    assert baselines["expert"]["success_rate"] == 1.0 and baselines["random"]["success_rate"] < 1.0

    ckpt = out / "run/ppo/checkpoints/000001"
    result = run_cli("eval", "--preset", PRESET, f"run.output_dir={out}", "run.name=ranked", "--ckpt", str(ckpt),
                     "--episodes", "3", "eval.max_new_tokens=8", "eval.trajectories=0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    folder = out / "ranked/eval/000001"
    agent = json.loads((folder / "metrics.json").read_text())
    report = (folder / "report.md").read_text()
    section = report.split("## Against the baselines")[1].split("\n## ")[0]
    rows = table_rows(section)
    assert list(rows) == ["policy", "000001", "expert (baseline)", "random (baseline)"]
    assert rows["policy"] == [
        "episodes",
        "success rate",
        "95% CI (Wilson)",
        "mean return",
        "invalid-action rate",
    ]
    for label, m in (("000001", agent), ("expert (baseline)", baselines["expert"]),
                     ("random (baseline)", baselines["random"])):  # fmt: skip
        written = json.loads((out / "ranked/eval" / m["name"] / "metrics.json").read_text())
        episodes, rate, ci, ret, invalid = rows[label]
        low, high = ci.split(" - ")
        assert int(episodes) == written["episodes"]
        assert percent(rate) == pytest.approx(written["success_rate"], abs=5e-4)
        assert [percent(low), percent(high)] == pytest.approx(written["success_ci95"], abs=5e-4)
        assert float(ret) == pytest.approx(written["return_mean"], rel=5e-3, abs=5e-4)
        assert percent(invalid) == pytest.approx(written["invalid_action_rate"], abs=5e-4)
    a, r = agent["success_rate"], baselines["random"]["success_rate"]
    where = "below random" if a < r else f"{100 * (a - r) / (1.0 - r):.0f}% of the way from random to expert"
    assert f"(baselines: expert 100.0%, random {100 * r:.1f}%), {where}. Its 95% interval" in section
    assert "No expert or random baseline" not in report
    page = (folder / "report.html").read_text()
    assert "<td>expert (baseline)</td>" in page and "<td>random (baseline)</td>" in page


def test_a_baseline_played_on_another_task_is_left_out(tmp_path):
    from vlmppo.config import load_config
    from vlmppo.eval.report import read_baselines
    from vlmppo.eval.runner import evaluate

    common = [f"run.output_dir={tmp_path}", "run.name=run", "eval.episodes=2", "eval.trajectories=0"]
    evaluate(load_config(PRESET, overrides=[*common, "env.n_envs=2"]), policy="expert")  # same task
    evaluate(load_config(PRESET, overrides=[*common, "env.max_episode_steps=3"]), policy="random")
    env = load_config(PRESET, overrides=common).env.model_dump(mode="json")
    found, notes = read_baselines(tmp_path / "run", env)
    assert list(found) == ["expert"] and found["expert"]["policy"] == "expert"
    assert len(notes) == 1 and "The random baseline in" in notes[0]
    assert "other env settings (env.max_episode_steps)" in notes[0]


def test_sampled_answers_go_to_their_own_folder_at_the_given_temperature(run_with_checkpoint):
    out = run_with_checkpoint
    ckpt = out / "run/ppo/checkpoints/000001"
    common = ["--preset", PRESET, f"run.output_dir={out}", "run.name=sampling", "--ckpt", str(ckpt),
              "--episodes", "3", "eval.max_new_tokens=8", "eval.trajectories=0"]  # fmt: skip
    greedy = run_cli("eval", *common)
    sampled = run_cli("eval", *common, "--sample", "eval.temperature=1.5")
    assert greedy.returncode == 0 and sampled.returncode == 0, greedy.stderr + sampled.stderr
    folders = {p.name for p in (out / "sampling/eval").iterdir()}
    assert folders == {"000001", "000001-sampled"}
    m = json.loads((out / "sampling/eval/000001-sampled/metrics.json").read_text())
    assert m["name"] == "000001-sampled" and m["decoding"] == "sampled at temperature 1.5"
    assert (
        "sampled at temperature 1.5 decoding" in (out / "sampling/eval/000001-sampled/report.md").read_text()
    )
    assert json.loads((out / "sampling/eval/000001/metrics.json").read_text())["decoding"] == "greedy"

    def first_answers(name):
        lines = (out / "sampling/eval" / name / "episodes.jsonl").read_text().splitlines()
        return {r["episode"]: (r["state"], r["answer"]) for r in map(json.loads, lines) if r["step"] == 0}

    # Same episodes, so the same first frame and prompt: greedy and sampled answers differ on each one
    # (eight tokens drawn at temperature 1.5 from a random model's whole vocabulary).
    greedy_first, sampled_first = first_answers("000001"), first_answers("000001-sampled")
    assert greedy_first.keys() == sampled_first.keys() == {0, 1, 2}
    for episode, (state, answer) in greedy_first.items():
        assert sampled_first[episode][0] == state and sampled_first[episode][1] != answer


def test_the_checkpoints_own_generation_config_is_used_only_when_asked_and_recorded(run_with_checkpoint):
    """The tiny model ships a hostile generation_config.json (repetition penalty, top-k, min-p, ...): eval
    ignores it by default and uses it, in a folder of its own, with eval.generation=checkpoint."""
    from vlmppo.config import load_config
    from vlmppo.eval.runner import evaluate

    out = run_with_checkpoint
    common = [f"run.output_dir={out}", "run.name=generation", f"eval.ckpt={out}/run/ppo/checkpoints/000001",
              "eval.episodes=2", "eval.max_new_tokens=6", "eval.trajectories=0"]  # fmt: skip
    explicit = evaluate(load_config(PRESET, overrides=common))
    own = evaluate(load_config(PRESET, overrides=[*common, "eval.generation=checkpoint"]))
    assert (explicit.name, own.name) == ("000001", "000001-checkpoint-generation")
    assert explicit.metrics["generation"] == "explicit" and explicit.metrics["decoding"] == "greedy"
    assert own.metrics["generation"] == "checkpoint"
    for setting in (
        "do_sample=True",
        "top_k=20",
        "min_p=0.05",
        "repetition_penalty=1.05",
        "no_repeat_ngram_size=3",
    ):
        assert setting in own.metrics["decoding"]
    manifest = json.loads((own.out_dir / "manifest.json").read_text())
    assert manifest["generation"] == "checkpoint" and manifest["decoding"] == own.metrics["decoding"]
    assert "checkpoint generation_config (" in own.report.read_text()


def test_a_full_model_checkpoint_from_sft_is_evaluated_from_the_cli(tmp_path):
    """``model.lora=null``: SFT saves a plain transformers model (no adapter), which eval loads as it is."""
    from tests.sft.helpers import sft_config, write_color_dataset

    from vlmppo.sft import train_sft

    train, val = write_color_dataset(tmp_path)
    # Twenty steps at lr 1e-3 teach the tiny model the answer format (a random one writes none).
    cfg = sft_config(tmp_path, train, val, "sft.max_steps=20", "model.lora=null", "sft.lr=1e-3")
    final = train_sft(cfg).final
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()

    result = run_cli("eval", "--preset", "probe-color-tiny", f"run.output_dir={tmp_path / 'runs'}", "model.lora=null",
                     "--ckpt", "sft", "--episodes", "6", "eval.trajectories=1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "runs/probe-color-tiny/eval/sft-000020"
    m = json.loads((folder / "metrics.json").read_text())
    assert m["policy"] == "checkpoint" and m["value_head"] is False and m["episodes"] == 6
    assert m["checkpoint"].endswith("sft/checkpoints/000020")
    # The fine-tuned weights answered: every answer is in the trained format (thoughts + a legal action).
    assert m["invalid_action_rate"] == 0.0
    steps = [json.loads(line) for line in (folder / "episodes.jsonl").read_text().splitlines()]
    assert len(steps) == 6 and all(row["thoughts"].startswith("the image is ") for row in steps)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert list(manifest["inputs"]) == ["model.safetensors"]
    assert (folder / "trajectories/episode-000.gif").is_file() and (folder / "report.html").is_file()


def test_a_checkpoint_path_is_evaluated_without_a_preset_in_the_run_it_belongs_to(
    run_with_checkpoint, tmp_path
):
    """The checkpoint carries its config.yaml. A run folder moved elsewhere and evaluated from a third
    folder gets its evaluation beside its checkpoints, where the report finds its curves and baselines."""
    moved = tmp_path / "elsewhere/runs/moved"
    shutil.copytree(run_with_checkpoint / "run/ppo", moved / "ppo", symlinks=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run_cli("eval", "--ckpt", str(moved / "ppo/checkpoints/last"), "--episodes", "2",
                     "eval.max_new_tokens=8", "eval.trajectories=0", cwd=cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr
    m = json.loads((moved / "eval/ppo-000001/metrics.json").read_text())
    assert m["episodes"] == 2 and m["env_id"] == "gym_cards/NumberLine-v0" and m["value_head"] is True
    assert f"report {moved / 'eval/ppo-000001/report.html'}" in result.stdout
    assert not any(cwd.iterdir())  # nothing written where the command ran


def test_eval_without_a_preset_or_a_checkpoint_config_is_a_clear_error(tmp_path):
    result = run_cli("eval", "--ckpt", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"No config given, and --ckpt {tmp_path} has no config.yaml" in " ".join(result.stderr.split())


def test_compare_prints_the_evaluations_side_by_side(run_with_checkpoint):
    out = run_with_checkpoint
    for policy in ("expert", "random"):
        done = run_cli("eval", *common(out), "--policy", policy, "--episodes", "20", "eval.trajectories=0")
        assert done.returncode == 0, done.stderr
    dirs = [out / "run/eval/expert", out / "run/eval/random"]
    result = run_cli("eval", "--compare", *map(str, dirs))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "expert" in text and "random" in text and "success rate" in text and "95% CI" in text
    for folder in dirs:
        m = json.loads((folder / "metrics.json").read_text())
        assert f"{100 * m['success_rate']:.1f}%" in text


def test_compare_of_a_folder_without_metrics_is_a_clear_error(tmp_path):
    result = run_cli("eval", "--compare", str(tmp_path))
    assert result.returncode == 1 and "has no metrics.json" in result.stderr
    assert "Traceback" not in result.stderr


def bad(out, *args):
    result = run_cli("eval", *common(out), *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "error:" in result.stderr
    return " ".join(result.stderr.split())


def test_a_checkpoint_path_that_does_not_exist_is_a_clear_error(tmp_path):
    assert "does not exist" in bad(tmp_path, "--ckpt", str(tmp_path / "nope"))


def test_a_folder_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/readme.txt").write_text("not a model")
    assert "is not a checkpoint" in bad(tmp_path, "--ckpt", str(tmp_path / "notes"))


def test_a_checkpoint_of_another_model_family_is_a_clear_error(run_with_checkpoint, tmp_path):
    ckpt = tmp_path / "qwen-ckpt"
    shutil.copytree(run_with_checkpoint / "run/ppo/checkpoints/000001", ckpt)
    result = run_cli(
        "eval", "--preset", "numberline-llava-tiny", f"run.output_dir={tmp_path}", "--ckpt", str(ckpt)
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "was trained from a qwen2-vl model" in " ".join(result.stderr.split())


def test_a_plain_peft_adapter_of_another_model_family_is_a_clear_error(tmp_path):
    from vlmppo.config import load_config
    from vlmppo.models import load_model

    llava = load_model(load_config("numberline-llava-tiny").model, for_training=True)
    llava.model.save_pretrained(tmp_path / "llava-adapter")  # no vlmppo.json: only peft's own files
    message = bad(tmp_path, "--ckpt", str(tmp_path / "llava-adapter"))
    assert "is a llava-next model but model.family is 'qwen2-vl'" in message


def test_no_checkpoint_in_the_run_is_a_clear_error(tmp_path):
    assert "No complete ppo/sft checkpoint" in bad(tmp_path, "--ckpt", "last")


def test_zero_episodes_is_a_clear_error(tmp_path):
    message = bad(tmp_path, "--policy", "random", "--episodes", "0")
    assert "eval.episodes" in message
    assert not (tmp_path / "run/eval").exists()


def test_no_seeds_is_a_clear_error(tmp_path):
    assert "Nothing to evaluate" in bad(tmp_path, "--policy", "random", "eval.seeds=[]")


def test_an_unknown_baseline_is_a_clear_error(tmp_path):
    assert "--policy 'greedy' is not a baseline" in bad(tmp_path, "--policy", "greedy")
