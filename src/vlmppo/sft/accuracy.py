"""Greedy action accuracy: does the fine-tuned model, decoding greedily, pick the label's action?

The number users care about more than loss: each val prompt is answered greedily (batched, left-padded,
the same inputs as generation everywhere else), the answer is read with the env's own parser, and it is
compared with the action the label's answer names (read with the same parser).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vlmppo.models.generation import explicit_generation_config, generate_ids, media_token_ids
from vlmppo.models.inputs import build_inputs
from vlmppo.sft.dataset import _open_rgb


@dataclass(frozen=True)
class ActionAccuracy:
    """Counts over the val set.

    Attributes:
        total: Val samples whose label names a legal action (the denominator).
        correct: Answers whose parsed action equals the label's (and that parsed at all).
        unparseable: Answers the parser could not read a single legal action from.
        label_unparseable: Val samples left out because their own label names no legal action (a dataset
            from another env, say).
        samples: A few (answer, label action, parsed action or None) triples, for the summary.
    """

    total: int
    correct: int
    unparseable: int
    label_unparseable: int
    samples: tuple = ()

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total else None

    @property
    def unparseable_rate(self) -> float | None:
        return self.unparseable / self.total if self.total else None


def greedy_action_accuracy(
    model, loaded, examples, adapter, *, batch_size: int, device, accelerator=None, synced_gpus: bool = False
) -> ActionAccuracy:
    """Generate greedily for every example and parse the answers with ``adapter.parse``.

    Args:
        model: The (unwrapped) model to generate with; put in eval mode here.
        loaded: The `LoadedModel` (processor, tokenizer, family).
        examples: `SftExample`s (prompt, label answer, image).
        adapter: The env adapter whose parser reads both the answers and the labels.
        batch_size: Prompts per ``generate`` call.
        device: Where the inputs go.
        accelerator: With several processes, each answers its share and the counts are summed.
        synced_gpus: ZeRO-3 needs every rank in every ``generate`` step (params are gathered on the fly).

    Returns:
        The counts (`ActionAccuracy`).
    """
    rng = np.random.default_rng(0)  # the parser's tie-break for invalid answers; never changes a count
    labels = [adapter.parse(e.answer, rng) for e in examples]
    usable = [i for i, p in enumerate(labels) if not p.invalid]
    tok = loaded.tokenizer
    # Room for the longest label answer (+ a margin): a model that learnt the format stops at eos well before.
    longest = max(
        (len(tok(examples[i].answer, add_special_tokens=False)["input_ids"]) for i in usable), default=1
    )
    world = accelerator.num_processes if accelerator else 1
    rank = accelerator.process_index if accelerator else 0
    share = usable[rank::world]
    n_batches = -(-len(usable) // (batch_size * world))  # the same on every rank (ZeRO-3 needs lockstep)
    # Plain greedy decoding, whatever the checkpoint's generation_config.json says.
    greedy = explicit_generation_config(
        tok, media_token_ids(model), temperature=0, max_new_tokens=longest + 16
    )
    counts = torch.zeros(3, dtype=torch.long)  # correct, unparseable, total
    samples = []
    model.eval()
    for b in range(n_batches):
        chunk = share[b * batch_size : (b + 1) * batch_size]
        real = len(chunk)
        if not chunk:  # this rank has run out, but must still take part in the step
            chunk = usable[:1]
        batch = build_inputs(
            loaded, [_open_rgb(examples[i]) for i in chunk], [examples[i].prompt for i in chunk]
        )
        batch = batch.to(device)
        out = generate_ids(model, batch, greedy, synced_gpus=synced_gpus)
        texts = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, text in zip(chunk[:real], texts[:real], strict=True):
            parsed = adapter.parse(text, rng)
            counts[2] += 1
            counts[1] += int(parsed.invalid)
            counts[0] += int(not parsed.invalid and parsed.index == labels[i].index)
            if len(samples) < 3:
                action = None if parsed.invalid else adapter.legal_actions[parsed.index]
                samples.append((text, adapter.legal_actions[labels[i].index], action))
    if accelerator is not None and world > 1:
        counts = accelerator.reduce(counts.to(accelerator.device), reduction="sum").cpu()
    correct, unparseable, total = (int(x) for x in counts)
    return ActionAccuracy(total, correct, unparseable, len(examples) - len(usable), tuple(samples))
