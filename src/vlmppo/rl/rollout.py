"""Phase 1 of a PPO update: sample thoughts + action for all envs at once, step them, keep what the
update needs to re-score exactly the same input.

Per step the buffer keeps the frame (once), the prompt text, the answer ids exactly as sampled (eos
included), the thought/key/action token masks, the old log-prob and value, the reward and the done flags, and
with a KL penalty the answer's per-token log-probs under the reference (``ActorCritic.reference_logprobs``). The
update rebuilds the same inputs with the same template (the forward is left-padding invariant) and scores
exactly the sampled answer ids.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vlmppo.rl.logprob import action_key_mask, action_key_start, action_token_mask, mixed_action_logprob


@dataclass
class Step:
    """What one env step keeps for the update (answer ids exactly as sampled, eos included)."""

    image: np.ndarray
    prompt: str
    answer_ids: list[int]
    thought_mask: list[bool]
    action_mask: list[bool]
    key_mask: list[bool]  # the "action": key tokens (weighted by ppo.action_key_coef)
    old_logp: float
    value: float
    text: str = ""
    action: int | None = None
    invalid: bool = False
    ended_with_eos: bool = True
    reward: float = 0.0
    ref_logp: list[float] | None = None  # per answer token, under the KL reference (ppo.kl_coef > 0 only)


@dataclass
class Rollout:
    """``n_steps × n_envs`` steps and their rewards/dones, plus what GAE needs at the end."""

    steps: list[list[Step]]
    rewards: torch.Tensor  # [T, N], invalid-action penalty included
    terminated: torch.Tensor  # [T, N] bool
    truncated: torch.Tensor  # [T, N] bool
    next_values: torch.Tensor  # [T, N] V(final obs) where an episode was truncated, else 0
    last_value: torch.Tensor  # [N] V(obs after the last step)
    episodes: list[dict] = field(default_factory=list)  # {"return", "length", "success"} finished in it
    seconds: float = 0.0
    answer_tokens: int = 0

    @property
    def flat(self) -> list[Step]:
        return [s for row in self.steps for s in row]

    @property
    def values(self) -> torch.Tensor:
        return torch.tensor([[s.value for s in row] for row in self.steps])


def answer_offsets(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """Character offsets of the answer tokens in the decoded answer text (special tokens: empty).

    Fast path, O(T): when re-tokenizing the decoded text gives back exactly the sampled ids (a trailing
    end-of-turn aside, which ``action_token_mask`` counts as action), the tokenizer's own offsets are
    those of the sampled tokens. Otherwise (an untrained model's byte soup often re-tokenizes
    differently) decode growing prefixes, O(T²), which works for every tokenizer and matches the text
    the parser saw.
    """
    body = ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids
    text = tokenizer.decode(body, skip_special_tokens=True)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if encoded["input_ids"] == body:
        return [tuple(pair) for pair in encoded["offset_mapping"]]
    return offsets_by_prefix_decoding(tokenizer, ids)


def offsets_by_prefix_decoding(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """Offsets from decoding ``ids[:1]``, ``ids[:2]``, …: each token spans what it added to the text."""
    offsets, previous = [], ""
    for j in range(len(ids)):
        text = tokenizer.decode(ids[: j + 1], skip_special_tokens=True)
        offsets.append((len(previous), len(text)) if text.startswith(previous) else (len(text), len(text)))
        previous = text
    return offsets


def prompts_for(adapter, infos, cfg) -> list[str]:
    return [adapter.prompt(i) for i in infos]  # the adapter's style is env.prompt (make_vec_env)


def rollout_step(policy, vec, obs, infos, cfg) -> tuple[list[Step], list, np.ndarray]:
    """One batched sample + score for all envs; returns the steps, the parsed actions and invalid flags."""
    p = cfg.ppo
    prompts = prompts_for(vec.adapter, infos, cfg)
    policy.loaded.model.eval()  # no LoRA dropout while sampling and scoring
    with torch.no_grad():
        sampled = policy.sample(obs, prompts, temperature=p.temperature, max_new_tokens=p.max_new_tokens)
        token_logp, values = policy.score(sampled, temperature=p.temperature)
        ref_logp = policy.reference_logprobs(sampled, temperature=p.temperature).cpu() if p.kl_coef else None
    # Per-sample bookkeeping below is many tiny ops: do it on the host, one copy of [B, T] + [B].
    token_logp, values = token_logp.float().cpu(), values.float().cpu()
    tok = policy.loaded.tokenizer
    steps, actions, invalid = [], [], []
    answers = sampled.sequences[:, sampled.prompt_len :]
    for i, text in enumerate(sampled.texts):
        ids = answers[i][sampled.answer_mask[i]].tolist()
        parsed = vec.adapter.parse(text, vec.rngs[i])
        offsets = answer_offsets(tok, ids)
        thought, action = action_token_mask(offsets, parsed.span, len(ids))
        key = action_key_mask(offsets, action_key_start(text, parsed.span), thought)
        thought = thought & ~key
        logp = mixed_action_logprob(
            token_logp[i : i + 1, : len(ids)],
            thought[None],
            action[None],
            p.thought_coef,
            key[None],
            p.action_key_coef,
        )
        steps.append(
            Step(
                image=np.asarray(obs[i]),
                prompt=prompts[i],
                answer_ids=ids,
                thought_mask=thought.tolist(),
                action_mask=action.tolist(),
                key_mask=key.tolist(),
                old_logp=float(logp),
                value=float(values[i]),
                text=text,
                action=parsed.index,
                invalid=bool(parsed.invalid),
                ended_with_eos=bool(ids) and ids[-1] == tok.eos_token_id,
                ref_logp=ref_logp[i, : len(ids)].tolist() if ref_logp is not None else None,
            )
        )
        actions.append(parsed.index)
        invalid.append(parsed.invalid)
    return steps, actions, np.asarray(invalid)


def state_values(policy, images, infos, adapter, cfg) -> torch.Tensor:
    """V(s) of observations (for the rollout's bootstrap): a prompt-only forward, [len(images)] fp32."""
    from vlmppo.models.generation import to_pil
    from vlmppo.models.inputs import build_inputs

    batch = build_inputs(policy.loaded, [to_pil(im) for im in images], prompts_for(adapter, infos, cfg))
    policy.loaded.model.eval()
    return policy.prompt_values(batch.to(policy.device)).float().cpu()


def collect_rollout(policy, vec, obs, infos, cfg) -> tuple[Rollout, object, list]:
    """``ppo.n_steps`` batched steps of all envs from (obs, infos); returns the rollout and the new obs/infos.

    Truncated (time-limit) episodes are bootstrapped from V of their final observation, which the vector
    env hands over in ``info["final_obs"]`` before it resets that env; terminated ones are not.
    """
    p = cfg.ppo
    t0 = time.time()
    T, N = p.n_steps, cfg.env.n_envs
    rows: list[list[Step]] = []
    rewards, terms, truncs = (
        torch.zeros(T, N),
        torch.zeros(T, N, dtype=torch.bool),
        torch.zeros(T, N, dtype=torch.bool),
    )
    next_values, episodes, tokens = torch.zeros(T, N), [], 0
    for t in range(T):
        row, actions, invalid = rollout_step(policy, vec, obs, infos, cfg)
        obs, r, term, trunc, infos = vec.step(actions)
        rewards[t] = torch.as_tensor(np.asarray(r, dtype=np.float64) + p.invalid_action_penalty * invalid)
        terms[t], truncs[t] = torch.as_tensor(term), torch.as_tensor(trunc)
        ended = [i for i in range(N) if trunc[i] and not term[i]]
        if ended:
            finals = state_values(
                policy,
                [infos[i]["final_obs"] for i in ended],
                [infos[i]["final_info"] for i in ended],
                vec.adapter,
                cfg,
            )
            next_values[t, ended] = finals
        for i, step in enumerate(row):
            step.reward = float(rewards[t, i])
        episodes += [info["episode"] for info in infos if "episode" in info]
        tokens += sum(len(s.answer_ids) for s in row)
        rows.append(row)
    last_value = state_values(policy, obs, infos, vec.adapter, cfg)
    rollout = Rollout(
        rows, rewards, terms, truncs, next_values, last_value, episodes, time.time() - t0, tokens
    )
    return rollout, obs, infos
