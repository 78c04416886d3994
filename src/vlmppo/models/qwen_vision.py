"""Qwen2-VL's vision tower without its per-image Python loops, for the batches vlmppo feeds it.

transformers 5.17's ``Qwen2VisionTransformerPretrainedModel`` handles a batch of images with two loops in Python:
the rotary position ids are built image by image (``vision_utils.get_vision_position_ids``: a meshgrid and a few
reshapes per image), and every attention implementation but flash-attention runs one SDPA call per image in every
block (``VisionAttention.forward`` splits the packed sequence at ``cu_seqlens``). For a batch of 64 frames and a
small model that is thousands of tiny ops per step, each a kernel launch on a GPU: the step is bound by the CPU
launching them, not by the GPU's arithmetic. Two subclasses, swapped in at load time (``speed_up_vision``) when
the vision attention is SDPA, remove both loops and change nothing else:

* ``BatchedVisionAttention``: when every image has the same number of patches (an env's frames all have the same
  size), one SDPA call over ``[images, heads, patches, head_dim]``, the same arithmetic per image; otherwise the
  stock loop.
* ``CachedPositionsVisionTower``: the rotary position ids built on the CPU by transformers' own function, kept
  per distinct tuple of image grids (an SFT or PPO run meets a handful), and handed to the stock forward, which
  accepts them precomputed.

State dicts, ``save_pretrained`` and checkpoints are unaffected (the classes add no parameters).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen
from transformers.vision_utils import get_vision_position_ids

KEPT_GRIDS = 16  # distinct grid tuples whose position ids are kept per device


class BatchedVisionAttention(qwen.VisionAttention):
    """``VisionAttention`` with one SDPA call for all images when they have the same number of patches."""

    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()  # a host sync, as in the stock forward
        if (
            len(set(lengths)) != 1
            or self.config._attn_implementation != "sdpa"
            or kwargs.get("output_attentions")
        ):
            return super().forward(hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
        images, length = len(lengths), lengths[0]
        seq_length = hidden_states.shape[0]
        query, key, value = (
            self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        )
        cos, sin = position_embeddings
        query, key = qwen.apply_rotary_pos_emb_vision(query, key, cos, sin)
        # [patches of all images, heads, d] -> [images, heads, patches, d]: each image attends to itself only.
        query, key, value = (
            t.reshape(images, length, self.num_heads, -1).transpose(1, 2) for t in (query, key, value)
        )
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, dropout_p=self.attention_dropout if self.training else 0.0, scale=self.scaling
        )
        return self.proj(out.transpose(1, 2).reshape(seq_length, -1))


class CachedPositionsVisionTower(qwen.Qwen2VisionTransformerPretrainedModel):
    """The vision tower with its rotary position ids computed once per distinct tuple of image grids."""

    def forward(self, hidden_states, grid_thw, **kwargs):
        if kwargs.get("position_ids") is None:
            kwargs["position_ids"] = self._positions(grid_thw)
        return super().forward(hidden_states, grid_thw, **kwargs)

    def _positions(self, grid_thw: torch.Tensor) -> torch.Tensor:
        kept = self.__dict__.setdefault("_kept_positions", OrderedDict())
        key = (str(grid_thw.device), tuple(map(tuple, grid_thw.tolist())))  # one host sync
        positions = kept.get(key)
        if positions is None:
            on_cpu = get_vision_position_ids(
                torch.tensor(key[1], dtype=grid_thw.dtype), self.spatial_merge_size
            )
            positions = kept[key] = on_cpu.to(grid_thw.device)
            while len(kept) > KEPT_GRIDS:
                kept.popitem(last=False)
        kept.move_to_end(key)
        return positions


def speed_up_vision(model) -> bool:
    """Swap the loop-free classes into a Qwen2-VL model whose vision attention is SDPA; True if swapped."""
    visual = getattr(getattr(model, "model", None), "visual", None)
    if type(visual) is not qwen.Qwen2VisionTransformerPretrainedModel:
        return False
    if visual.config._attn_implementation != "sdpa":
        return False
    visual.__class__ = CachedPositionsVisionTower
    for block in visual.blocks:
        if type(block.attn) is qwen.VisionAttention:
            block.attn.__class__ = BatchedVisionAttention
    return True
