"""Fast CPU block-sparse attention: gather each tile's keys, then one batched SDPA.

Never materializes an S x S tensor: the largest temporaries are a chunk of gathered tiles
(``[B * t, H, R, D]``) and, for partial tiles only, their additive mask ``[t, 1, Tq, R]``.
Fully-live plans (e.g. GNA with tile-aligned strides) run with no mask at all, which is where
the CPU speed comes from.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .plan import BlockPlan

# Bound on the bytes of gathered K/V (+ mask) per chunk of tiles: big enough to keep SDPA's
# batches large, small enough to stay in a few hundred MB at 4K-class token counts.
CHUNK_BYTES = 192 * 2**20

_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def sdpa_with_lse(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """SDPA that also returns the log-sum-exp, on CPU tensors.

    Args: q ``[N, H, Lq, D]``, k/v ``[N, H, Lk, D]``, attn_mask additive in q's dtype,
    broadcastable to ``[N, H, Lq, Lk]``.
    Returns: ``(out [N, H, Lq, D], lse [N, H, Lq] fp32)``.
    """
    return _flash_cpu(q, k, v, attn_mask=attn_mask, scale=scale)


def can_run_cpu(q: Tensor) -> tuple[bool, str]:
    """Whether the CPU path can run on tensors like ``q``; the reason when it cannot."""
    if q.device.type != "cpu":
        return False, f"tensors are on {q.device.type}, the cpu backend needs CPU tensors"
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False, f"dtype {q.dtype} is not one of float32, bfloat16, float16"
    return True, "CPU tensors of a supported dtype"


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
    # One zero token appended at index S serves every padded slot of every tile.
    pad = q.new_zeros(b, 1, h, d)
    qp, kp, vp = (torch.cat([t, pad], dim=1) for t in (q, k, v))
    out = q.new_empty(b, s + 1, h, d)
    lse = torch.empty(b, s + 1, h, dtype=torch.float32)
    n_tiles, tq = plan.q_index.shape
    r = plan.kv_index.shape[1]
    per_tile = b * h * (2 * r * d + tq * d) * q.element_size() + (tq * r * q.element_size() if plan.has_mask else 0)
    step = max(1, CHUNK_BYTES // max(per_tile, 1))
    for start in range(0, n_tiles, step):
        tiles = slice(start, min(start + step, n_tiles))
        qi, ki = plan.q_index[tiles], plan.kv_index[tiles]
        t = qi.shape[0]
        # [B, t, L, H, D] -> [B * t, H, L, D]
        qt = qp[:, qi].permute(0, 1, 3, 2, 4).reshape(b * t, h, tq, d)
        kt = kp[:, ki].permute(0, 1, 3, 2, 4).reshape(b * t, h, r, d)
        vt = vp[:, ki].permute(0, 1, 3, 2, 4).reshape(b * t, h, r, d)
        mask = plan.tile_mask(tiles)
        bias = None
        if mask is not None:
            bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, float("-inf"))
            bias = bias[:, None].repeat(b, 1, 1, 1) if b > 1 else bias[:, None]  # [B * t, 1, Tq, R]
        o, l = sdpa_with_lse(qt, kt, vt, bias, scale)
        # padded query slots all scatter to row S, which is dropped
        out[:, qi.reshape(-1)] = o.reshape(b, t, h, tq, d).permute(0, 1, 3, 2, 4).reshape(b, t * tq, h, d)
        lse[:, qi.reshape(-1)] = l.reshape(b, t, h, tq).permute(0, 1, 3, 2).reshape(b, t * tq, h)
    return out[:, :s], lse[:, :s]
