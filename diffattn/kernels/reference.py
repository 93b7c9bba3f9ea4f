"""Exact dense masked attention in fp32: the ground truth every kernel and method is checked against.

Materializes the full ``[B, H, Sq, Sk]`` score matrix, so it is for small shapes only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .plan import BlockPlan, check_bool_mask


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    extra_k: Tensor | None = None,
    extra_v: Tensor | None = None,
    extra_mask: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Masked softmax attention, computed in fp32.

    Args:
        q, k, v: ``[B, S, H, D]`` (k/v may have another length ``Sk``).
        mask: bool ``[Sq, Sk]`` (or broadcastable to ``[B, H, Sq, Sk]``); True = attend.
        extra_k, extra_v: ``[B, T, H, D]`` keys/values every query attends (e.g. text tokens).
        extra_mask: bool ``[B, T]`` key-padding mask of the extra keys (True = valid).
        bias: additive fp32 logit bias broadcastable to ``[B, H, Sq, Sk]`` (before extra keys).
        scale: softmax scale, default ``D ** -0.5``.

    Returns:
        ``(out [B, S, H, D] in q's dtype, lse [B, S, H] fp32)``; fully-masked rows give 0 / -inf.
        NaN or Inf in q, k or v is never removed: every query that attends it gets NaN (a NaN value
        also reaches the queries that mask it out: 0 x NaN is NaN in the product with v).
    """
    check_bool_mask("mask", mask)
    check_bool_mask("extra_mask", extra_mask)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    scores = (qf @ kf.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.float()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    if extra_k is not None:
        assert extra_v is not None
        ek, ev = extra_k.float().transpose(1, 2), extra_v.float().transpose(1, 2)
        extra_scores = (qf @ ek.transpose(-1, -2)) * scale
        if extra_mask is not None:
            extra_scores = extra_scores.masked_fill(~extra_mask[:, None, None, :], float("-inf"))
        scores = torch.cat([scores, extra_scores], dim=-1)
        vf = torch.cat([vf, ev], dim=2)
    lse = torch.logsumexp(scores, dim=-1)  # [B, H, S]
    # exp(-inf - -inf) is NaN on rows with no key: those rows are 0, and only those (NaN inputs stay NaN)
    probs = torch.exp(scores - lse.unsqueeze(-1)).masked_fill(torch.isneginf(lse).unsqueeze(-1), 0.0)
    out = probs @ vf
    return out.transpose(1, 2).to(q.dtype), lse.transpose(1, 2)


def reference_plan_attention(
    q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, **kwargs: object
) -> tuple[Tensor, Tensor]:
    """`reference_attention` restricted to the (query, key) pairs of a plan."""
    return reference_attention(q, k, v, plan.dense_mask().to(q.device), **kwargs)  # type: ignore[arg-type]
