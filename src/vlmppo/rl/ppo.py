"""The PPO loop (RL4VLM): sample thoughts + action for all envs at once, GAE, clipped updates.

Reads top to bottom in phases: 1. collect rollouts, 2. advantages, 3. PPO epochs, 4. log, 5. checkpoint.
The rollout stores (frame, prompt text, answer ids) per step; the update rebuilds the same inputs with
the same template (the forward is left-padding invariant) and scores exactly the sampled answer ids.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vlmppo.config import Config, config_to_yaml, run_dir
from vlmppo.config.plan import ppo_counts
from vlmppo.rl.gae import compute_gae, normalize_advantages
from vlmppo.rl.logprob import action_token_mask, mixed_action_logprob
from vlmppo.rl.losses import explained_variance, policy_loss, value_loss
from vlmppo.rl.policy import ActorCritic, Sampled, ValueHead, hidden_size
from vlmppo.rl.schedule import make_cosine_scheduler


@dataclass
class Step:
    """What one env step keeps for the update (answer ids exactly as sampled, eos included)."""

    image: np.ndarray
    prompt: str
    answer_ids: list[int]
    thought_mask: list[bool]
    action_mask: list[bool]
    old_logp: float
    value: float


def answer_offsets(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """Character offsets of each answer token in the decoded answer text (special tokens: empty)."""
    offsets, previous = [], ""
    for j in range(len(ids)):
        text = tokenizer.decode(ids[: j + 1], skip_special_tokens=True)
        offsets.append((len(previous), len(text)) if text.startswith(previous) else (len(text), len(text)))
        previous = text
    return offsets


def collate(policy: ActorCritic, steps: list[Step]) -> tuple[Sampled, torch.Tensor, torch.Tensor]:
    """Rebuild the prompt batch and append the answer ids (right-padded): the input the rollout scored."""
    from vlmppo.models.generation import to_pil
    from vlmppo.models.inputs import build_inputs

    tok = policy.loaded.tokenizer
    batch = build_inputs(policy.loaded, [to_pil(s.image) for s in steps], [s.prompt for s in steps])
    batch = batch.to(policy.device)
    width = max(len(s.answer_ids) for s in steps)
    answers = torch.full((len(steps), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(steps), width), dtype=torch.bool)
    thought = torch.zeros_like(mask)
    action = torch.zeros_like(mask)
    for i, s in enumerate(steps):
        n = len(s.answer_ids)
        answers[i, :n] = torch.tensor(s.answer_ids)
        mask[i, :n] = True
        thought[i, :n] = torch.tensor(s.thought_mask)
        action[i, :n] = torch.tensor(s.action_mask)
    answers, mask = answers.to(policy.device), mask.to(policy.device)
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    sampled = Sampled(
        sequences=torch.cat([batch["input_ids"], answers], dim=1),
        attention_mask=torch.cat([batch["attention_mask"], mask.long()], dim=1),
        prompt_len=batch["input_ids"].shape[1],
        answer_mask=mask,
        extra=extra,
        texts=[],
    )
    return sampled, thought.to(policy.device), action.to(policy.device)


def build_policy(cfg: Config, device: str) -> ActorCritic:
    from vlmppo.models import load_model

    if cfg.ppo.init_from:
        from peft import PeftModel

        from vlmppo.checkpoints import check_family, resolve_checkpoint

        path = resolve_checkpoint(run_dir(cfg), cfg.ppo.init_from)
        meta = check_family(path, cfg.model.family)
        base = cfg.model.model_copy(update={"path": meta.get("base_model", cfg.model.path), "lora": None})
        loaded = load_model(base, device=device, for_training=False)
        loaded.model = PeftModel.from_pretrained(loaded.model, str(path), is_trainable=True)
    else:
        loaded = load_model(cfg.model, device=device, for_training=True)
    return ActorCritic(loaded, ValueHead(hidden_size(loaded.model)), device)


def rollout_step(policy, vec, obs, infos, cfg: Config) -> tuple[list[Step], list, np.ndarray]:
    """One batched sample + score for all envs; returns the steps, the parsed actions and invalid flags."""
    p = cfg.ppo
    prompts = [vec.adapter.prompt(i, action_only=cfg.env.prompt == "action_only") for i in infos]
    policy.loaded.model.eval()  # no LoRA dropout while sampling and scoring
    with torch.no_grad():
        sampled = policy.sample(obs, prompts, temperature=p.temperature, max_new_tokens=p.max_new_tokens)
        token_logp, values = policy.score(sampled, temperature=p.temperature)
    tok = policy.loaded.tokenizer
    steps, actions, invalid = [], [], []
    answers = sampled.sequences[:, sampled.prompt_len :]
    for i, text in enumerate(sampled.texts):
        ids = answers[i][sampled.answer_mask[i]].tolist()
        parsed = vec.adapter.parse(text, vec.rngs[i])
        offsets = answer_offsets(tok, ids)
        thought, action = action_token_mask(offsets, parsed.span, len(ids))
        logp = mixed_action_logprob(
            token_logp[i : i + 1, : len(ids)], thought[None], action[None], p.thought_coef
        )
        steps.append(
            Step(
                np.asarray(obs[i]),
                prompts[i],
                ids,
                thought.tolist(),
                action.tolist(),
                float(logp),
                float(values[i]),
            )
        )
        actions.append(parsed.index)
        invalid.append(parsed.invalid)
    return steps, actions, np.asarray(invalid)


def state_values(policy, images, infos, adapter, cfg) -> torch.Tensor:
    """V(s) of observations (for the rollout's bootstrap): a prompt-only forward, [len(images)] fp32."""
    from vlmppo.models.generation import to_pil
    from vlmppo.models.inputs import build_inputs

    prompts = [adapter.prompt(i, action_only=cfg.env.prompt == "action_only") for i in infos]
    batch = build_inputs(policy.loaded, [to_pil(im) for im in images], prompts).to(policy.device)
    with torch.no_grad():
        out = policy.loaded.model(**batch, output_hidden_states=True)
        return policy.value_head(out.hidden_states[-1][:, -1]).float().cpu()


@dataclass
class PpoResult:
    out_dir: Path
    updates: int
    env_steps: int
    last_metrics: dict


def train_ppo(cfg: Config, *, on_update=None) -> PpoResult:
    """Run PPO as configured; metrics every update in ``runs/<name>/ppo/metrics.jsonl``, checkpoints
    every ``ppo.save_every`` updates and at the end."""
    from vlmppo.checkpoints import save_checkpoint
    from vlmppo.envs import make_vec_env
    from vlmppo.io import JsonlWriter
    from vlmppo.sysinfo import resolve_device

    p, counts = cfg.ppo, ppo_counts(cfg)
    unsupported = {k: v for k, v in (("ent_coef", p.ent_coef), ("kl_coef", p.kl_coef)) if v}
    unsupported.update({k: v for k, v in (("target_kl", p.target_kl), ("value_head_lr", p.value_head_lr)) if v})
    if unsupported:
        from vlmppo.errors import NotBuiltYet

        names = ", ".join(f"ppo.{k}={v}" for k, v in unsupported.items())
        raise NotBuiltYet(f"{names}: not built yet in this version of the PPO loop (issue 7); set to 0/null.")
    device = resolve_device(cfg)
    torch.manual_seed(cfg.run.seed)
    out = run_dir(cfg) / "ppo"
    out.mkdir(parents=True, exist_ok=True)
    policy = build_policy(cfg, device)
    params = [q for q in policy.loaded.model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params + list(policy.value_head.parameters()), lr=p.lr, eps=p.adam_eps)
    scheduler = make_cosine_scheduler(optimizer, counts["updates"], p.lr, p.min_lr)
    vec = make_vec_env(
        cfg.env.id,
        cfg.env.n_envs,
        cfg.run.seed,
        max_episode_steps=cfg.env.max_episode_steps,
        observation=cfg.env.observation,
        tile_size=cfg.env.tile_size,
        **cfg.env.kwargs,
    )
    obs, infos = vec.reset()
    rng = np.random.default_rng(cfg.run.seed)
    env_steps, metrics = 0, {}
    episode_returns, episode_success = [], []
    with JsonlWriter(out / "metrics.jsonl") as log:
        for update in range(1, counts["updates"] + 1):
            # 1. collect rollouts
            t0 = time.time()
            T, N = p.n_steps, cfg.env.n_envs
            steps: list[list[Step]] = []
            rewards, terms, truncs = torch.zeros(T, N), torch.zeros(T, N), torch.zeros(T, N)
            next_values, invalid_count = torch.zeros(T, N), 0
            for t in range(T):
                row, actions, invalid = rollout_step(policy, vec, obs, infos, cfg)
                obs, r, term, trunc, infos = vec.step(actions)
                rewards[t] = torch.as_tensor(r + p.invalid_action_penalty * invalid, dtype=torch.float32)
                terms[t], truncs[t] = torch.as_tensor(term).float(), torch.as_tensor(trunc).float()
                invalid_count += int(invalid.sum())
                ended = [i for i in range(N) if trunc[i] and not term[i]]
                if ended:  # bootstrap truncated episodes from the value of their final observation
                    finals = state_values(
                        policy,
                        [infos[i]["final_obs"] for i in ended],
                        [infos[i]["final_info"] for i in ended],
                        vec.adapter,
                        cfg,
                    )
                    for k, i in enumerate(ended):
                        next_values[t, i] = finals[k]
                for info in infos:
                    if "episode" in info:
                        episode_returns.append(info["episode"]["return"])
                        episode_success.append(float(info["episode"]["success"]))
                steps.append(row)
            env_steps += T * N
            rollout_s = time.time() - t0
            # 2. advantages
            values = torch.tensor([[s.value for s in row] for row in steps])
            last_value = state_values(policy, obs, infos, vec.adapter, cfg)
            adv, returns = compute_gae(
                rewards, values, terms.bool(), truncs.bool(), next_values, last_value, p.gamma, p.gae_lambda
            )
            flat = [s for row in steps for s in row]
            adv_flat, ret_flat, val_flat = (
                normalize_advantages(adv.reshape(-1)),
                returns.reshape(-1),
                values.reshape(-1),
            )
            old_logp = torch.tensor([s.old_logp for s in flat])
            # 3. PPO epochs
            t1 = time.time()
            policy.loaded.model.train()
            stats = {"policy_loss": [], "value_loss": [], "approx_kl": [], "clip_frac": []}
            for _ in range(p.n_epochs):
                order = rng.permutation(len(flat))
                for start in range(0, len(flat) - p.minibatch_size + 1, p.minibatch_size):
                    idx = order[start : start + p.minibatch_size]
                    optimizer.zero_grad(set_to_none=True)
                    for m in range(0, len(idx), p.micro_batch_size):
                        micro = idx[m : m + p.micro_batch_size]
                        sampled, thought, action = collate(policy, [flat[i] for i in micro])
                        token_logp, new_values = policy.score(sampled, temperature=p.temperature)
                        new_logp = mixed_action_logprob(token_logp, thought, action, p.thought_coef)
                        pl, st = policy_loss(
                            new_logp, old_logp[micro].to(device), adv_flat[micro].to(device), p.clip_range
                        )
                        vl = value_loss(
                            new_values,
                            val_flat[micro].to(device),
                            ret_flat[micro].to(device),
                            p.clip_range_vf,
                        )
                        ((pl + p.vf_coef * vl) * len(micro) / len(idx)).backward()
                        stats["policy_loss"].append(pl.item())
                        stats["value_loss"].append(vl.item())
                        stats["approx_kl"].append(st["approx_kl"].item())
                        stats["clip_frac"].append(st["clip_frac"].item())
                    torch.nn.utils.clip_grad_norm_(
                        params + list(policy.value_head.parameters()), p.max_grad_norm
                    )
                    optimizer.step()
            scheduler.step()
            # 4. log
            recent = slice(-max(1, N), None)
            metrics = {
                "update": update,
                "env_steps": env_steps,
                "rollout/ep_return_mean": float(np.mean(episode_returns[recent]))
                if episode_returns
                else None,
                "rollout/success_rate": float(np.mean(episode_success[recent])) if episode_success else None,
                "rollout/invalid_action_rate": invalid_count / (T * N),
                "rollout/reward_mean": float(rewards.mean()),
                **{f"train/{k}": float(np.mean(v)) for k, v in stats.items() if v},
                "train/explained_variance": explained_variance(val_flat, ret_flat),
                "train/lr": optimizer.param_groups[0]["lr"],
                "time/rollout_s": rollout_s,
                "time/update_s": time.time() - t1,
                "time/env_steps_per_s": T * N / max(rollout_s, 1e-9),
            }
            log.write_many([metrics])
            if on_update:
                on_update(update, counts["updates"], metrics)
            # 5. checkpoint
            if update % p.save_every == 0 or update == counts["updates"]:

                def write(folder: Path, policy=policy) -> None:
                    from safetensors.torch import save_file

                    policy.loaded.model.save_pretrained(folder)
                    policy.loaded.processor.save_pretrained(folder)
                    save_file(policy.value_head.state_dict(), str(folder / "value_head.safetensors"))
                    (folder / "config.yaml").write_text(config_to_yaml(cfg))

                save_checkpoint(
                    out / "checkpoints",
                    update,
                    {
                        "stage": "ppo",
                        "family": cfg.model.family,
                        "base_model": str(policy.loaded.path),
                        "update": update,
                        "env_steps": env_steps,
                        "metrics": json.loads(json.dumps(metrics)),
                    },
                    write,
                )
    return PpoResult(out, counts["updates"], env_steps, metrics)
