"""Shared by the scoring tests: what `generate` itself says about the answers it sampled."""

from __future__ import annotations

import torch

from vlmppo.models.generation import generate_ids, to_pil
from vlmppo.models.inputs import build_inputs


def generate_with_logprobs(
    model, policy, images, prompts, *, temperature: float, max_new_tokens: int, sampled
):
    """Sample again through PPO's own sampling path (same seed as ``sampled`` expected) asking ``generate`` for
    the scores it sampled from, i.e. after every logits processor that ran (temperature, the suppressed
    placeholder ids, and anything else that got in); returns (sequences, [B, T] log-probs of the sampled
    answer ids, 0 outside ``sampled.answer_mask``)."""
    batch = build_inputs(policy.loaded, [to_pil(i) for i in images], prompts)
    config = policy.sampling_config(temperature=temperature, max_new_tokens=max_new_tokens)
    config.output_scores, config.return_dict_in_generate = True, True
    gen = generate_ids(model, batch, config)
    answers = gen.sequences[:, sampled.prompt_len :]
    logp = torch.stack(
        [
            torch.log_softmax(s.float(), -1).gather(1, answers[:, t : t + 1]).squeeze(1)
            for t, s in enumerate(gen.scores)
        ],
        dim=1,
    ).masked_fill(~sampled.answer_mask, 0.0)
    return gen.sequences, logp
