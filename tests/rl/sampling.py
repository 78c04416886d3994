"""Shared by the scoring tests: what `generate` itself says about the answers it sampled."""

from __future__ import annotations

import torch

from vlmppo.models.generation import to_pil
from vlmppo.models.inputs import build_inputs


def generate_with_logprobs(
    model, policy, images, prompts, *, temperature: float, max_new_tokens: int, sampled
):
    """Sample again with ``model.generate`` (same seed as ``sampled`` expected) asking for the scores it sampled
    from (after temperature and the suppressed placeholder ids); returns (sequences, [B, T] log-probs of the
    sampled answer ids, 0 outside ``sampled.answer_mask``)."""
    batch = build_inputs(policy.loaded, [to_pil(i) for i in images], prompts)
    tok = policy.loaded.tokenizer
    gen = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        suppress_tokens=policy.suppressed,
        output_scores=True,
        return_dict_in_generate=True,
    )
    answers = gen.sequences[:, sampled.prompt_len :]
    logp = torch.stack(
        [
            torch.log_softmax(s.float(), -1).gather(1, answers[:, t : t + 1]).squeeze(1)
            for t, s in enumerate(gen.scores)
        ],
        dim=1,
    ).masked_fill(~sampled.answer_mask, 0.0)
    return gen.sequences, logp
