"""Phase 1 of a PPO update: sample thoughts + action for all envs at once, step them, and keep in the
rollout buffer (``rl/buffer.py``) what the update needs to re-score exactly the same input.

Per env step that is the frame, the prompt text, the earlier turns the prompt showed (``env.history``: kept
per env by ``rl/history.py``), the answer ids exactly as sampled (eos included), the
thought/key/action token masks, the old log-prob and value, the reward and the done flags, and with a KL
penalty the answer's per-token log-probs under the reference (``ActorCritic.reference_logprobs``). The
update rebuilds the same inputs with the same template (the forward is left-padding invariant) and scores
exactly the sampled answer ids.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from vlmppo.config import Config
from vlmppo.rl.buffer import RolloutBuffer, StepBatch
from vlmppo.rl.history import HistoryWindows
from vlmppo.rl.logprob import action_key_mask, action_key_start, action_token_mask, mixed_action_logprob
from vlmppo.rl.policy import ActorCritic

if TYPE_CHECKING:
    from vlmppo.envs.adapter import EnvAdapter
    from vlmppo.envs.vec_env import VecEnv


def answer_offsets(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """Character offsets of the answer tokens in the decoded answer text (special tokens: empty).

    Fast path, O(T): when re-tokenizing the decoded text gives back exactly the sampled ids (a trailing
    end-of-turn aside, which ``action_token_mask`` counts as action), the tokenizer's own offsets are
    those of the sampled tokens. Otherwise (an untrained model's byte soup often re-tokenizes
    differently) decode growing prefixes, O(T²), which works for every tokenizer and matches the text
    the parser saw.
    """
    return batch_answer_offsets(tokenizer, [ids])[0]


def batch_answer_offsets(tokenizer, rows: list[list[int]]) -> list[list[tuple[int, int]]]:
    """``answer_offsets`` of every row, in one decode, one encode and one decode of the growing prefixes of
    the rows that re-tokenize differently. Per row and per prefix, transformers' ``decode`` costs more in
    Python checks than in decoding: at 128 random-weight answers of 128 tokens that was ~0.4 s a step."""
    decode = batch_decoder(tokenizer)
    eos = tokenizer.eos_token_id
    bodies = [ids[:-1] if ids and ids[-1] == eos else ids for ids in rows]
    if not rows:
        return []
    encoded = tokenizer(decode(bodies), add_special_tokens=False, return_offsets_mapping=True)
    offsets: list = [None] * len(rows)
    slow = []
    for row, body in enumerate(bodies):
        if encoded["input_ids"][row] == body:
            offsets[row] = [tuple(pair) for pair in encoded["offset_mapping"][row]]
        else:
            slow.append(row)
    texts = iter(decode([rows[row][:end] for row in slow for end in range(1, len(rows[row]) + 1)]))
    for row in slow:
        offsets[row] = _offsets_from_prefix_texts(texts, len(rows[row]))
    return offsets


def offsets_by_prefix_decoding(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """Offsets from decoding ``ids[:1]``, ``ids[:2]``, …: each token spans what it added to the text."""
    texts = iter([tokenizer.decode(ids[:end], skip_special_tokens=True) for end in range(1, len(ids) + 1)])
    return _offsets_from_prefix_texts(texts, len(ids))


def _offsets_from_prefix_texts(texts, count: int) -> list[tuple[int, int]]:
    """The offsets of ``count`` tokens from the next ``count`` texts of ``texts`` (prefix 1, 2, ...)."""
    offsets, previous = [], ""
    for _ in range(count):
        text = next(texts)
        offsets.append((len(previous), len(text)) if text.startswith(previous) else (len(text), len(text)))
        previous = text
    return offsets


def batch_decoder(tokenizer):
    """A function: list of id lists -> their texts, as ``tokenizer.decode(ids, skip_special_tokens=True)``
    gives each. For a fast tokenizer whose decode is the stock one without clean-up that is a single call
    into the Rust tokenizer (the same call ``decode`` ends in); otherwise ``decode`` row by row."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    stock = (
        isinstance(tokenizer, TokenizersBackend)
        and type(tokenizer)._decode is TokenizersBackend._decode
        and not tokenizer.clean_up_tokenization_spaces
    )
    if stock:
        backend = tokenizer.backend_tokenizer
        return lambda seqs: backend.decode_batch(seqs, skip_special_tokens=True) if seqs else []
    return lambda seqs: [tokenizer.decode(ids, skip_special_tokens=True) for ids in seqs]


def prompts_for(adapter: EnvAdapter, infos: list[dict]) -> list[str]:
    return [adapter.prompt(info) for info in infos]  # the adapter's style is env.prompt (make_vec_env)


def rollout_step(
    policy: ActorCritic,
    vec: VecEnv,
    obs: list[np.ndarray],
    infos: list[dict],
    cfg: Config,
    histories: list[tuple] | None = None,
) -> StepBatch:
    """One batched sample + score of all ``vec.n_envs`` envs: answers, parsed actions, log-probs, values.
    ``histories``: each env's earlier turns (``HistoryWindows.histories``), shown before its frame; the
    log-probs and value are those of this step's answer and prompt only."""
    ppo = cfg.ppo
    prompts = prompts_for(vec.adapter, infos)
    policy.loaded.model.eval()  # no LoRA dropout while sampling and scoring
    with torch.no_grad():
        sampled = policy.sample(
            obs, prompts, temperature=ppo.temperature, max_new_tokens=ppo.max_new_tokens, histories=histories
        )
        token_logp, values = policy.score(sampled, temperature=ppo.temperature)
        ref_logp = (
            policy.reference_logprobs(sampled, temperature=ppo.temperature).cpu() if ppo.kl_coef else None
        )
    # Per-sample bookkeeping below is many tiny ops: do it on the host, one copy of [B, T] + [B].
    token_logp, values = token_logp.float().cpu(), values.float().cpu()
    answer_mask = sampled.answer_mask.cpu()  # a prefix: the tokens up to the first end-of-turn
    answers = sampled.sequences[:, sampled.prompt_len :].cpu().masked_fill(~answer_mask, 0)
    tokenizer = policy.loaded.tokenizer
    marked = mark_answers(
        tokenizer, vec.adapter, vec.rngs, sampled.texts, answers, answer_mask, token_logp, ppo
    )
    masks, old_logp, actions, invalid, ended_with_eos = marked
    return StepBatch(
        images=[np.asarray(frame) for frame in obs],
        prompts=prompts,
        answer_ids=answers,
        answer_lengths=answer_mask.sum(dim=1),
        thought_mask=masks["thought"],
        action_mask=masks["action"],
        key_mask=masks["key"],
        old_logp=old_logp,
        values=values,
        ref_logp=ref_logp,  # 0 after each answer (``ActorCritic.score``)
        texts=list(sampled.texts),
        actions=actions,
        invalid=invalid,
        ended_with_eos=ended_with_eos,
        histories=histories,
    )


def mark_answers(tokenizer, adapter: EnvAdapter, rngs, texts, answers, answer_mask, token_logp, ppo):
    """The host bookkeeping of a step's answers: parse each (with its env's fallback ``rng``), split its
    tokens into thought / ``"action":`` key / action, and its old action log-prob.

    Args:
        texts: The B decoded answers; answers: [B, T] ids (0 after each answer); answer_mask: [B, T] bool;
        token_logp: [B, T] fp32 per-token log-probs (host); ppo: the ``ppo`` config section.

    Returns:
        ``(masks, old_logp, actions, invalid, ended_with_eos)``: masks ``{"thought", "action", "key"}`` each
        [B, T] bool, old_logp [B] fp32, the parsed action indices, and two [B] bool tensors.
    """
    masks = {name: torch.zeros_like(answer_mask) for name in ("thought", "action", "key")}
    old_logp = torch.zeros(len(texts))
    all_ids = [answers[row][answer_mask[row]].tolist() for row in range(len(texts))]
    parsed = [adapter.parse(text, rng) for text, rng in zip(texts, rngs, strict=True)]
    # Offsets only where the parser found an action: without one every token is a thought token.
    found = [row for row, p in enumerate(parsed) if p.span is not None]
    offsets: list = [[] for _ in texts]
    found_offsets = batch_answer_offsets(tokenizer, [all_ids[row] for row in found])
    for row, row_offsets in zip(found, found_offsets, strict=True):
        offsets[row] = row_offsets
    for row, (text, ids, action_found) in enumerate(zip(texts, all_ids, parsed, strict=True)):
        thought, action = action_token_mask(offsets[row], action_found.span, len(ids))
        key = action_key_mask(offsets[row], action_key_start(text, action_found.span), thought)
        thought = thought & ~key
        old_logp[row] = mixed_action_logprob(
            token_logp[row : row + 1, : len(ids)],
            thought[None],
            action[None],
            ppo.thought_coef,
            key[None],
            ppo.action_key_coef,
        )[0]
        for name, mask in (("thought", thought), ("action", action), ("key", key)):
            masks[name][row, : len(ids)] = mask
    actions = [p.index for p in parsed]
    invalid = torch.tensor([bool(p.invalid) for p in parsed], dtype=torch.bool)
    eos = tokenizer.eos_token_id
    ended_with_eos = torch.tensor([bool(ids) and ids[-1] == eos for ids in all_ids], dtype=torch.bool)
    return masks, old_logp, actions, invalid, ended_with_eos


def state_values(
    policy: ActorCritic,
    images: list[np.ndarray],
    infos: list[dict],
    adapter: EnvAdapter,
    histories: list[tuple] | None = None,
) -> torch.Tensor:
    """V(s) of observations (for the rollout's bootstrap): a prompt-only forward, [len(images)] fp32.
    ``histories``: the earlier turns each observation's prompt shows (``env.history``)."""
    from vlmppo.models.generation import to_pil
    from vlmppo.models.inputs import build_inputs

    pil = [to_pil(image) for image in images]
    batch = build_inputs(policy.loaded, pil, prompts_for(adapter, infos), histories=histories)
    policy.loaded.model.eval()
    return policy.prompt_values(batch.to(policy.device)).float().cpu()


def batched_state_values(
    policy: ActorCritic,
    images: list[np.ndarray],
    infos: list[dict],
    adapter: EnvAdapter,
    histories: list[tuple] | None,
    rows: int,
) -> torch.Tensor:
    """``state_values`` of any number of observations, ``rows`` at a time (the rollout's batch, whose
    activations the memory estimate already covers); [len(images)] fp32."""
    chunks = [
        state_values(
            policy,
            images[start : start + rows],
            infos[start : start + rows],
            adapter,
            histories[start : start + rows] if histories is not None else None,
        )
        for start in range(0, len(images), rows)
    ]
    return torch.cat(chunks) if chunks else torch.zeros(0)


def collect_rollout(
    policy: ActorCritic,
    vec: VecEnv,
    obs: list[np.ndarray],
    infos: list[dict],
    cfg: Config,
    history: HistoryWindows | None = None,
) -> tuple[RolloutBuffer, list[np.ndarray], list[dict]]:
    """``ppo.n_steps`` batched steps of all envs from (obs, infos).

    Truncated (time-limit) episodes are bootstrapped from V of their final observation, which the vector
    env hands over in ``info["final_obs"]`` before it resets that env; terminated ones are not. Those
    values and V of the observation after the last step are computed together after the last step (the
    weights do not change during a rollout, so V is the same then): one value pass per ``n_envs``
    observations instead of one more pass for every step in which some episode hit its time limit.
    ``history``: the envs' windows of earlier turns (``env.history`` > 0), advanced step by step here.

    Returns:
        The full buffer (``finish``-ed with V of the observation after its last step; ``buffer.timing``
        says where its seconds went), and the new obs and infos to continue from.
    """
    ppo = cfg.ppo
    started = time.perf_counter()
    buffer = RolloutBuffer(ppo.n_steps, vec.n_envs, ppo.max_new_tokens, reference=bool(ppo.kl_coef))
    critic = policy.value_head is not None  # GRPO/GiGPO have none: nothing to bootstrap from
    truncations = PendingValues()
    graphs = CaptureWatch(policy)
    for t in range(ppo.n_steps):
        step_started = time.perf_counter()
        buffer.idle[t] = torch.tensor([bool(info.get("group_wait")) for info in infos])  # grouped resets
        histories = history.histories() if history is not None else None
        step = rollout_step(policy, vec, obs, infos, cfg, histories)
        obs, rewards, terminated, truncated, infos = vec.step(step.actions)
        # The windows follow the vector env's auto-reset: an ended episode's turns go with it.
        after = (
            history.advance(step.images, step.texts, terminated | truncated) if history is not None else None
        )
        penalised = np.asarray(rewards, dtype=np.float64) + ppo.invalid_action_penalty * step.invalid.numpy()
        if critic:
            for env in range(vec.n_envs):
                if truncated[env] and not terminated[env]:
                    truncations.add(t, env, infos[env], after[env] if after is not None else None)
        buffer.add(
            step,
            torch.as_tensor(penalised),
            torch.as_tensor(terminated),
            torch.as_tensor(truncated),
            torch.zeros(vec.n_envs),  # V(final observation) of the truncated ones: filled in below
        )
        buffer.episodes += [info["episode"] for info in infos if "episode" in info]
        if graphs.captured():  # the static decoder captured CUDA graphs during this step (once per process)
            buffer.timing.capture_steps += 1
            buffer.timing.capture_s += time.perf_counter() - step_started
    values_started = time.perf_counter()
    last = history.histories() if history is not None else None
    if critic:
        values = truncations.values(policy, obs, infos, last, vec.adapter, rows=vec.n_envs)
        buffer.bootstrap_values[truncations.steps, truncations.envs] = values[: len(truncations)]
        buffer.finish(values[len(truncations) :])
    else:
        buffer.finish(torch.zeros(vec.n_envs))
    buffer.timing.values_s = time.perf_counter() - values_started
    buffer.seconds = time.perf_counter() - started
    return buffer, obs, infos


class PendingValues:
    """The final observations of the episodes a rollout's time limits cut short, kept until its end."""

    def __init__(self):
        self.steps: list[int] = []
        self.envs: list[int] = []
        self.frames: list[np.ndarray] = []
        self.infos: list[dict] = []
        self.histories: list[tuple] = []

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, t: int, env: int, info: dict, history: tuple | None) -> None:
        self.steps.append(t)
        self.envs.append(env)
        self.frames.append(info["final_obs"])
        self.infos.append(info["final_info"])
        self.histories.append(history)

    def values(self, policy, obs, infos, last_histories, adapter, rows: int) -> torch.Tensor:
        """V of every kept final observation, then of ``obs`` (the observations after the last step)."""
        histories = None
        if last_histories is not None:
            histories = [*self.histories, *last_histories]
        frames, all_infos = [*self.frames, *obs], [*self.infos, *infos]
        return batched_state_values(policy, frames, all_infos, adapter, histories, rows)


class CaptureWatch:
    """Tells whether the policy's static decoder captured new CUDA graphs since the last look: the first
    step of a process (and a step after its buffers grew) spends seconds capturing, which the loop reports
    apart from its steady rollout rate. Never true for ``model.decoder=generate`` or on the CPU."""

    def __init__(self, policy: ActorCritic):
        self.decoders = []
        if policy.decoder.startswith("static"):
            from vlmppo.models.generation import static_decoder_for

            model = policy.sampler.model if policy.sampler is not None else policy.loaded.model
            self.decoders = [static_decoder_for(model, compile=policy.decoder == "static-compiled")]
        self.seen = self._graph_ids()

    def _graph_ids(self) -> set[int]:
        return {id(graph) for d in self.decoders for graph in (getattr(d, "graphs", None) or {}).values()}

    def captured(self) -> bool:
        now = self._graph_ids()
        new = bool(now - self.seen)
        self.seen = now
        return new
