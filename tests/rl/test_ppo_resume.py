"""PPO checkpoints continue the run exactly; signals stop it cleanly; non-finite losses never train."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tests.helpers import run_cli

from vlmppo.config import load_config
from vlmppo.rl import train_ppo
from vlmppo.rl.startup import build_policy, make_optimizer
from vlmppo.rl.update import BadMinibatchGuard, TrainingDiverged, ppo_epochs

SMALL = [
    "env.n_envs=2",
    "ppo.n_steps=4",
    "ppo.minibatch_size=4",
    "ppo.micro_batch_size=2",
    "ppo.n_epochs=2",
    "ppo.max_new_tokens=8",
    "ppo.save_every=100",
    "ppo.total_env_steps=32",  # 4 updates of 2 envs x 4 steps
]


def metrics(run):
    return [json.loads(line) for line in (run / "ppo/metrics.jsonl").read_text().splitlines()]


def stop_at(update_to_stop):
    """on_update callback that sends this process SIGUSR1 after the given update (as SLURM would)."""

    def on_update(update, total, m):
        if update == update_to_stop:
            os.kill(os.getpid(), signal.SIGUSR1)

    return on_update


def test_four_updates_straight_equal_two_then_resume_two(tmp_path):
    straight = load_config("numberline-tiny", overrides=[*SMALL, f"run.output_dir={tmp_path / 'a'}"])
    train_ppo(straight)
    split = load_config("numberline-tiny", overrides=[*SMALL, f"run.output_dir={tmp_path / 'b'}"])
    first = train_ppo(split, on_update=stop_at(2))
    assert first.stopped_by == "SIGUSR1" and first.updates == 2
    assert first.checkpoint.name == "000002"
    second = train_ppo(split, resume="auto")
    assert second.stopped_by is None and second.updates == 4

    a, b = metrics(tmp_path / "a/numberline-tiny"), metrics(tmp_path / "b/numberline-tiny")
    assert [m["update"] for m in b] == [1, 2, 3, 4]
    for ma, mb in zip(a, b, strict=True):
        for key in (
            "train/policy_loss",
            "train/value_loss",
            "train/approx_kl",
            "rollout/reward_mean",
            "train/lr",
        ):
            assert ma[key] == pytest.approx(mb[key], rel=1e-6, abs=1e-7), (ma["update"], key)
        assert ma["env_steps"] == mb["env_steps"]
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "a/numberline-tiny/ppo/checkpoints/last/adapter_model.safetensors"))
    wb = load_file(str(tmp_path / "b/numberline-tiny/ppo/checkpoints/last/adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_resume_refuses_a_checkpoint_with_another_lora_layout(tmp_path):
    cfg = load_config(
        "numberline-tiny", overrides=[*SMALL, "ppo.total_env_steps=8", f"run.output_dir={tmp_path}"]
    )
    train_ppo(cfg)
    out = run_cli(
        "ppo",
        "--preset",
        "numberline-tiny",
        *SMALL,
        f"run.output_dir={tmp_path}",
        "model.lora.r=4",
        "--resume",
        "auto",
    )
    assert out.returncode == 1, out.stderr
    assert "LoRA r=8" in out.stderr and "model.lora.r=4" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.e2e
def test_resume_with_another_n_envs_is_one_clear_error_and_other_changes_are_listed(tmp_path):
    cfg = load_config(
        "numberline-tiny", overrides=[*SMALL, "ppo.total_env_steps=8", f"run.output_dir={tmp_path}"]
    )
    first = train_ppo(cfg)
    args = ["ppo", "--preset", "numberline-tiny", *SMALL, f"run.output_dir={tmp_path}", "--resume", "auto",
            "ppo.total_env_steps=16"]  # fmt: skip
    refused = run_cli(*args, "env.n_envs=4", "ppo.clip_range=0.2")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    message = " ".join(refused.stderr.split())
    assert (
        "env.n_envs: 2 -> 4" in message
        and "vector env" in message
        and "ppo.clip_range: 0.1 -> 0.2" in message
    )
    assert [p.name for p in (first.out_dir / "checkpoints").iterdir() if p.name.isdigit()] == ["000001"]
    resumed = run_cli(*args, "ppo.clip_range=0.2")
    assert resumed.returncode == 0, resumed.stderr
    out = " ".join(resumed.stdout.split())
    assert "changed since the checkpoint: ppo.clip_range: 0.1 -> 0.2" in out
    assert "changed since the checkpoint: ppo.total_env_steps: 8 -> 16" in out and "env.n_envs" not in out
    assert [m["update"] for m in metrics(tmp_path / "numberline-tiny")] == [1, 2]


@pytest.mark.e2e
def test_resume_from_a_missing_path_is_a_clear_error(tmp_path):
    out = run_cli(
        "ppo", "--preset", "numberline-tiny", f"run.output_dir={tmp_path}", "--resume", str(tmp_path / "nope")
    )
    assert out.returncode == 1 and "does not exist" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.e2e
def test_sigterm_from_outside_saves_a_checkpoint_exits_0_and_resume_finishes_the_run(tmp_path):
    args = [
        "ppo",
        "--preset",
        "minigrid-doorkey-tiny",
        f"run.output_dir={tmp_path}",
        *SMALL,
        "ppo.total_env_steps=48",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmppo", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = tmp_path / "minigrid-doorkey-tiny/ppo/metrics.jsonl"
    deadline = time.time() + 300
    while not (log.is_file() and log.read_text().strip()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "stopped on SIGTERM" in stdout
    done = len(metrics(tmp_path / "minigrid-doorkey-tiny"))
    assert 1 <= done < 6
    ckpt = json.loads((tmp_path / "minigrid-doorkey-tiny/ppo/checkpoints/last/vlmppo.json").read_text())
    assert ckpt["update"] == done
    out = run_cli(*args, "--resume", "auto", env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "resuming from" in out.stdout
    assert [m["update"] for m in metrics(tmp_path / "minigrid-doorkey-tiny")] == [1, 2, 3, 4, 5, 6]


def test_non_finite_losses_skip_the_step_and_abort_after_max_bad_minibatches_in_a_row(tmp_path):
    from vlmppo.envs import make_vec_env
    from vlmppo.rl.rollout import collect_rollout

    cfg = load_config(
        "probe-color-tiny", overrides=[*SMALL, f"run.output_dir={tmp_path}", "ppo.max_bad_minibatches=3"]
    )
    torch.manual_seed(0)
    policy = build_policy(cfg, "cpu")
    vec = make_vec_env(cfg.env.id, cfg.env.n_envs, 0)
    obs, infos = vec.reset()
    buffer, _, _ = collect_rollout(policy, vec, obs, infos, cfg)
    buffer.compute_advantages(cfg.ppo)
    buffer.normalize_advantages()
    optimizer = make_optimizer(policy, cfg)
    with torch.no_grad():  # a broken value head: every loss is NaN from here on
        policy.value_head.net[-1].weight.fill_(float("nan"))
    before = {n: q.detach().clone() for n, q in policy.loaded.model.named_parameters() if q.requires_grad}
    guard = BadMinibatchGuard(cfg.ppo.max_bad_minibatches)
    with pytest.raises(TrainingDiverged, match="3 minibatches in a row"):
        ppo_epochs(policy, optimizer, buffer, cfg, np.random.default_rng(0), guard)
    assert guard.total == 3
    for name, param in policy.loaded.model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param.detach(), before[name]), f"{name} was stepped with a NaN gradient"


def test_a_good_minibatch_resets_the_bad_streak():
    guard = BadMinibatchGuard(limit=2)
    guard.bad("the loss")
    guard.good()
    guard.bad("the loss")  # 1 in a row again, not 2
    assert guard.total == 2 and guard.consecutive == 1
    with pytest.raises(TrainingDiverged):
        guard.bad("the loss")


def test_target_kl_and_value_head_lr_options_are_used_and_the_kl_starts_at_zero(tmp_path):
    cfg = load_config(
        "probe-color-tiny",
        overrides=[
            *SMALL,
            f"run.output_dir={tmp_path}",
            "ppo.total_env_steps=8",
            "ppo.n_epochs=3",
            "ppo.kl_coef=0.1",
            "ppo.ent_coef=0.01",
            "ppo.target_kl=1e-9",  # any movement stops the update after its first minibatch
            "ppo.value_head_lr=0.5",
        ],
    )
    result = train_ppo(cfg)
    m = result.last_metrics
    # one minibatch ran: before its step the LoRA B matrices are zero, so the policy IS the base model
    assert m["train/optimizer_steps"] == 1 and m["train/early_stopped"] == 1.0
    assert m["train/kl_ref"] == 0.0
    assert m["train/lr_value_head"] == pytest.approx(0.5 * m["train/lr"] / cfg.ppo.lr)
    samples = [json.loads(x) for x in (result.out_dir / "samples.jsonl").read_text().splitlines()]
    assert samples and {"text", "action", "reward", "invalid"} <= samples[0].keys()


def test_the_entropy_bonus_raises_the_entropy_and_the_kl_penalty_lowers_the_kl(tmp_path):
    # One rollout, one start: the update trained without either term, with ent_coef, and with kl_coef. A term
    # the loss ignored would leave the weights exactly as without it; one with the wrong sign would move
    # the entropy or the KL the other way.
    from vlmppo.envs import make_vec_env
    from vlmppo.rl.rollout import collect_rollout
    from vlmppo.rl.update import micro_loss

    cfg = load_config(
        "numberline-tiny",
        overrides=[*SMALL, f"run.output_dir={tmp_path}", "ppo.kl_coef=1.0", "ppo.lr=1e-3"],
    )
    torch.manual_seed(0)
    policy = build_policy(cfg, "cpu")
    with torch.no_grad():  # non-zero LoRA B: the policy starts away from its reference (the adapter disabled)
        for name, param in policy.loaded.model.named_parameters():
            if "lora_B" in name:
                param.add_(0.1 * torch.randn_like(param))
    vec = make_vec_env(cfg.env.id, cfg.env.n_envs, 0)
    buffer, _, _ = collect_rollout(policy, vec, *vec.reset(), cfg)
    buffer.compute_advantages(cfg.ppo)
    buffer.normalize_advantages()
    # The random tiny model's answers never parse, so they have no action tokens and no entropy bonus:
    # count every answer token as an action token, as after a parsed answer's thoughts.
    answer = torch.arange(buffer.max_answer_tokens) < buffer.answer_lengths[..., None]
    buffer.thought_mask, buffer.action_mask = torch.zeros_like(answer), answer
    start = {name: param.detach().clone() for name, param in policy.loaded.model.named_parameters()}
    start_head = {name: param.detach().clone() for name, param in policy.value_head.named_parameters()}

    def train(ent_coef: float, kl_coef: float) -> tuple[dict, float, float]:
        """The trained LoRA weights and the entropy and KL of the whole rollout under them."""
        with torch.no_grad():
            for name, param in policy.loaded.model.named_parameters():
                param.copy_(start[name])
            for name, param in policy.value_head.named_parameters():
                param.copy_(start_head[name])
        run_cfg = cfg.model_copy(
            update={"ppo": cfg.ppo.model_copy(update={"ent_coef": ent_coef, "kl_coef": kl_coef})}
        )
        guard = BadMinibatchGuard(3)
        ppo_epochs(policy, make_optimizer(policy, run_cfg), buffer, run_cfg, np.random.default_rng(0), guard)
        with torch.no_grad():
            _, stats = micro_loss(policy, buffer.samples(range(buffer.size)), cfg)  # kl_ref: kl_coef > 0
        trained = {n: p.detach().clone() for n, p in policy.loaded.model.named_parameters() if "lora_" in n}
        return trained, stats["entropy"], stats["kl_ref"]

    plain, plain_entropy, plain_kl = train(ent_coef=0.0, kl_coef=0.0)
    again, _, _ = train(ent_coef=0.0, kl_coef=0.0)
    assert all(torch.equal(plain[name], again[name]) for name in plain)  # the comparison is exact
    bonus, bonus_entropy, _ = train(ent_coef=1.0, kl_coef=0.0)
    penalty, _, penalty_kl = train(ent_coef=0.0, kl_coef=1.0)
    assert any(not torch.equal(plain[name], bonus[name]) for name in plain)
    assert any(not torch.equal(plain[name], penalty[name]) for name in plain)
    assert bonus_entropy > plain_entropy > 0.0
    assert plain_kl > penalty_kl > 0.0


@pytest.mark.e2e
def test_a_fresh_run_into_a_folder_with_checkpoints_is_refused_and_they_stay(tmp_path):
    args = [
        "ppo",
        "--preset",
        "numberline-tiny",
        *SMALL,
        "ppo.total_env_steps=8",
        f"run.output_dir={tmp_path}",
    ]
    assert run_cli(*args).returncode == 0
    ckpts = tmp_path / "numberline-tiny/ppo/checkpoints"
    before = sorted(p.name for p in ckpts.iterdir())
    again = run_cli(*args)
    assert again.returncode == 1 and "--resume auto" in again.stderr and "Traceback" not in again.stderr
    assert sorted(p.name for p in ckpts.iterdir()) == before


def test_ppo_turns_dropout_off_so_the_first_ratio_is_exactly_one(tmp_path):
    from vlmppo.envs import make_vec_env
    from vlmppo.rl.rollout import collect_rollout
    from vlmppo.rl.update import micro_loss

    cfg = load_config(
        "numberline-tiny", overrides=[*SMALL, f"run.output_dir={tmp_path}", "model.lora.dropout=0.5"]
    )
    torch.manual_seed(0)
    policy = build_policy(cfg, "cpu")
    dropouts = [m for m in policy.loaded.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.0 for m in dropouts)
    vec = make_vec_env(cfg.env.id, cfg.env.n_envs, 0)
    obs, infos = vec.reset()
    nudge = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero LoRA B, so dropout on the adapter input would change the output
        for name, p in policy.loaded.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=nudge))
    buffer, _, _ = collect_rollout(policy, vec, obs, infos, cfg)
    buffer.compute_advantages(cfg.ppo)
    buffer.normalize_advantages()
    policy.loaded.model.train()  # as in the update
    _, stats = micro_loss(policy, buffer.samples([0, 1, 2, 3]), cfg)
    assert stats["clip_frac"] == 0.0 and abs(stats["approx_kl"]) < 1e-6
    for m in dropouts:  # with the dropout the config asked for, the same pass would see another policy
        m.p = 0.5
    _, noisy = micro_loss(policy, buffer.samples([0, 1, 2, 3]), cfg)
    assert abs(noisy["approx_kl"]) > 1e-4


@pytest.mark.e2e
def test_a_checkpoint_that_cannot_be_written_is_a_clear_error_and_the_previous_one_stays(tmp_path):
    # A real write failure: the resumed run may write no file over 1 MiB (RLIMIT_FSIZE; Python ignores
    # SIGXFSZ, so the write fails with EFBIG as a full disk fails with ENOSPC). The value head (2.4 MB)
    # cannot be written, so update 2's checkpoint fails half-way.
    import resource
    import subprocess
    import sys

    args = ["ppo", "--preset", "numberline-tiny", *SMALL, "ppo.save_every=1", f"run.output_dir={tmp_path}"]
    first = run_cli(*args, "ppo.total_env_steps=8")
    assert first.returncode == 0, first.stderr
    ckpts = tmp_path / "numberline-tiny/ppo/checkpoints"
    saved = {p.name: p.stat().st_mtime_ns for p in (ckpts / "000001").iterdir()}

    def small_files_only():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, resource.RLIM_INFINITY))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    full = subprocess.run(
        [sys.executable, "-m", "vlmppo", *args, "ppo.total_env_steps=16", "--resume", "auto"],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=small_files_only,
        timeout=600,
    )
    assert full.returncode == 1, full.stderr
    assert "Could not write checkpoint" in full.stderr and "000002" in full.stderr
    # It says why, with what limits writing there (not only torch's "unexpected pos 64 vs 0").
    assert "File too large" in full.stderr and "may write no file over 1.0 MiB" in full.stderr
    assert "Traceback" not in full.stderr
    assert sorted(p.name for p in ckpts.iterdir()) == ["000001", "last"]  # no half-written folder
    assert (ckpts / "last").resolve().name == "000001"
    assert {p.name: p.stat().st_mtime_ns for p in (ckpts / "000001").iterdir()} == saved
    # The intact checkpoint resumes, and update 2 is in the metrics once.
    again = run_cli(*args, "ppo.total_env_steps=16", "--resume", "auto", env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr
    assert [m["update"] for m in metrics(tmp_path / "numberline-tiny")] == [1, 2]
