"""Kernels: *how* a `BlockPlan` is computed. Methods never look past this module's functions.

The backends (triton, cpu, reference) are objects in `backends.py`; `choose_backend` resolves one
once (at patch time, or once per functional call) and methods receive it in their `AttendCall`.
The functions below take that object, or a backend name that they resolve for this one call.
"""

from __future__ import annotations

from torch import Tensor

from .backends import BACKENDS, Backend, choose_backend, get_backend
from .cpu import batch_item_bytes
from .merge import merge_attention
from .paths import note_path, record_paths
from .plan import AxisTiling, BlockPlan, check_bool_mask
from .reference import reference_attention

__all__ = [
    "BACKENDS",
    "AxisTiling",
    "Backend",
    "BlockPlan",
    "attend_extra",
    "batch_item_bytes",
    "block_sparse_attention",
    "choose_backend",
    "dense_attention",
    "get_backend",
    "merge_attention",
    "record_paths",
    "reference_attention",
]


def attend_extra(
    q: Tensor,
    extra_k: Tensor,
    extra_v: Tensor,
    extra_mask: Tensor | None,
    scale: float | None,
    backend: Backend | str = "auto",
) -> tuple[Tensor, Tensor]:
    """Dense attention of every query over extra keys (e.g. text tokens).

    q ``[B, S, H, D]``, extra_k/v ``[B, T, H, D]``, extra_mask bool ``[B, T]`` (True = valid).
    Returns ``(out [B, S, H, D], lse [B, S, H] fp32)``. Never O(S^2) except on the reference backend.
    A float ``extra_mask`` (an SDPA-style additive one) is refused with a TypeError.
    """
    check_bool_mask("extra_mask", extra_mask)
    return choose_backend(q, backend).extra(q, extra_k, extra_v, extra_mask, scale)


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: Tensor | None = None,
    scale: float | None = None,
    backend: Backend | str = "auto",
) -> tuple[Tensor, Tensor]:
    """Attention of every query over every key, with an optional additive logit bias.

    q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]``; bias fp32 broadcastable to ``[B, H, Sq, Sk]``
    (``-inf`` drops a pair). For short key sets (proxies, agents): ``Sq x Sk`` bias, never ``Sq x Sq``.
    Returns ``(out [B, Sq, H, D], lse [B, Sq, H] fp32)``. Without a bias on triton it never
    materializes scores; with a bias off the CPU it is the exact ``Sq x Sk`` reference.
    """
    chosen = choose_backend(q, backend)
    if chosen.name != "cpu":  # the cpu backend records its own path
        note_path(chosen.name)
    return chosen.dense(q, k, v, bias, scale)


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    plan: BlockPlan,
    *,
    extra_k: Tensor | None = None,
    extra_v: Tensor | None = None,
    extra_mask: Tensor | None = None,
    scale: float | None = None,
    backend: Backend | str = "auto",
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Block-sparse attention over a plan, plus optional dense extra keys, merged by log-sum-exp.

    q, k, v: ``[B, S, H, D]``, ``S == plan.num_tokens``; extra_k/v ``[B, T, H, D]``.
    Returns ``out [B, S, H, D]`` (and ``lse [B, S, H]`` fp32 if ``return_lse``).
    ``extra_mask`` is bool ``[B, T]`` (True = valid); a float one (an SDPA-style additive mask) is refused
    with a TypeError. NaN or Inf in q, k or v is never removed: every query that attends it gets NaN
    (so may the other queries its backend computes with it: the same tile on cpu and triton, and
    on cpu's strips path every tile whose key box holds it).
    """
    check_bool_mask("extra_mask", extra_mask)
    if extra_k is not None and extra_v is None:
        raise ValueError("extra_k was given without extra_v")
    extra = (extra_k, extra_v, extra_mask) if extra_k is not None and extra_v is not None else None
    chosen = choose_backend(q, backend)
    if chosen.name != "cpu":  # the cpu backend records its own path per plan
        note_path(chosen.name)
    out, lse = chosen.sparse(q, k, v, plan, extra, scale)
    return (out, lse) if return_lse else out
