"""Fast CPU block-sparse attention: gather each tile's keys, then one batched SDPA.

Never materializes an S x S tensor: the largest temporaries are a chunk of gathered tiles
(``[B * t, H, R, D]``) and one additive mask ``[1, 1, Tq, R]`` per group of like tiles (the plan
orders tiles so that tiles with equal masks are adjacent). Fully-live plans (GNA with strides of
at least half a tile) run with no mask at all. What remains costly is the gather itself: keys of
overlapping windows are copied once per tile that needs them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .plan import BlockPlan

# Bound on the bytes gathered per chunk of tiles. Small on purpose: glibc serves blocks below its
# mmap threshold (<= 32 MB) from reused heap memory, while bigger temporaries are fresh mmaps whose
# page faults cost more than the gather itself (measured: 0.34 s vs 0.09 s for 512 MB).
CHUNK_BYTES = 16 * 2**20

_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def sdpa_with_lse(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """SDPA that also returns the log-sum-exp, on CPU tensors.

    Args: q ``[N, H, Lq, D]``, k/v ``[N, H, Lk, D]``, attn_mask additive in q's dtype,
    broadcastable to ``[N, H, Lq, Lk]``.
    Returns: ``(out [N, H, Lq, D], lse [N, H, Lq] fp32)``.
    """
    # the CPU flash op silently returns garbage when D is not the innermost (stride-1) dimension
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return _flash_cpu(q, k, v, attn_mask=attn_mask, scale=scale)


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool mask (True = attend) as the additive 0 / -inf bias the CPU flash op wants, in ``dtype``."""
    return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask.bool(), float("-inf"))


def block_sparse_attention_cpu(
    q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Attention of every query over its tile's keys.

    Args:
        q, k, v: ``[B, S, H, D]`` with ``S == plan.num_tokens`` (grid order).
        plan: the tiles and keys to attend.
    Returns:
        ``(out [B, S, H, D], lse [B, S, H] fp32)``.
    """
    b, s, h, d = q.shape
    if s != plan.num_tokens:
        raise ValueError(f"sequence length {s} does not match the plan's grid {plan.grid} ({plan.num_tokens})")
    # row S of the outputs receives every padded query slot and is dropped
    out = q.new_empty(b, s + 1, h, d)
    lse = torch.empty(b, s + 1, h, dtype=torch.float32)
    q_gather, kv_gather = plan.gather_index
    tq, r = plan.q_index.shape[1], plan.kv_index.shape[1]
    per_tile = b * h * d * (2 * r + 2 * tq) * q.element_size()
    step = max(1, CHUNK_BYTES // per_tile)
    for g0, g1, full in plan.groups:
        bias = None
        if not full:  # one mask serves the whole group: [1, 1, Tq, R], broadcast over tiles
            mask = plan.tile_mask(slice(g0, g0 + 1))
            assert mask is not None
            bias = additive_mask(mask, q.dtype)[:, None]
        for start in range(g0, g1, step):
            tiles = slice(start, min(start + step, g1))
            t = q_gather[tiles].shape[0]
            qi, ki = q_gather[tiles].reshape(-1), kv_gather[tiles].reshape(-1)
            # [B, t * L, H, D] gathered rows -> [B * t, H, L, D] strided view (SDPA takes strides)
            qt = q.index_select(1, qi).view(b * t, tq, h, d).transpose(1, 2)
            kt = k.index_select(1, ki).view(b * t, r, h, d).transpose(1, 2)
            vt = v.index_select(1, ki).view(b * t, r, h, d).transpose(1, 2)
            o, l = sdpa_with_lse(qt, kt, vt, bias, scale)
            dest = plan.q_index[tiles].reshape(-1)
            out.index_copy_(1, dest, o.transpose(1, 2).reshape(b, t * tq, h, d))
            lse.index_copy_(1, dest, l.transpose(1, 2).reshape(b, t * tq, h))
    return out[:, :s], lse[:, :s]
