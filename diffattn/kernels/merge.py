"""Merge partial attentions over disjoint key sets through their log-sum-exp.

This is the one place where partial results are combined (window + text tokens, local + proxies,
two branches). For partials ``(out_i, lse_i)`` of the same queries over disjoint key sets,
``lse = logsumexp_i(lse_i)`` and ``out = sum_i exp(lse_i - lse) * out_i``, in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor

_CHUNK_BYTES = 4 << 20


def merge_attention(partials: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Combine partial attentions.

    Args:
        partials: ``[(out_i [B, S, H, D], lse_i [B, S, H] fp32), ...]``, at least one.

    Returns:
        ``(out [B, S, H, D] in the dtype of the first partial, lse [B, S, H] fp32)``.
        A query whose every partial is empty (lse = -inf) gets a zero output; a NaN in any partial's
        lse or output stays NaN (never zeroed: non-finite inputs must show in the result).
    """
    if not partials:
        raise ValueError("merge_attention needs at least one partial attention, got none")
    if len(partials) == 1:
        return partials[0]
    lses = torch.stack([lse.float() for _, lse in partials])  # [P, B, S, H]
    lse = torch.logsumexp(lses, dim=0)
    # exp(-inf - -inf) is NaN for queries with no key in any partial: their weights must be 0, and only
    # theirs (a NaN from NaN inputs must survive)
    weights = torch.exp(lses - lse.unsqueeze(0)).masked_fill(torch.isneginf(lse).unsqueeze(0), 0.0).unsqueeze(-1)
    # Accumulate in fp32 over token chunks of ~4 MB: whole-tensor fp32 temporaries are fresh
    # allocations whose page faults cost more than the arithmetic on CPUs (bf16 at 16k tokens x 8
    # heads x 64: 30 ms whole vs 5 ms chunked); small chunks reuse the allocator's memory.
    first = partials[0][0]
    out = torch.empty_like(first)
    rows = max(1, _CHUNK_BYTES // (4 * max(1, first[:, :1].numel())))  # batch 0: one empty chunk
    for start in range(0, first.shape[1], rows):
        sl = slice(start, start + rows)
        acc = first[:, sl].float() * weights[0][:, sl]  # not in place: .float() of fp32 is the input
        for w, (o, _) in zip(weights[1:], partials[1:]):
            acc.addcmul_(o[:, sl].float(), w[:, sl])  # same-dtype operands: mixed-dtype in-place is slow
        out[:, sl] = acc
    return out, lse
