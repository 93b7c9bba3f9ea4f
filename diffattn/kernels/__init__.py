"""Kernels: *how* a `BlockPlan` is computed. Methods never look past this module's functions.

Backends, in the order ``"auto"`` tries them:
  - ``"triton"``: block-sparse flash attention on CUDA (not part of this build yet, see README);
  - ``"cpu"``: tile gather + batched SDPA (`cpu.py`);
  - ``"reference"``: exact dense masked fp32 (`reference.py`), any device, small shapes only.
The choice is made once (at patch time, or per functional call) from ordered ``can_run_*`` checks
that each log why they reject; nothing switches backends inside a forward pass.
"""

from __future__ import annotations

import logging

from torch import Tensor

from .cpu import additive_mask, block_sparse_attention_cpu, can_run_cpu, sdpa_with_lse
from .merge import merge_attention
from .plan import AxisTiling, BlockPlan
from .reference import reference_attention, reference_plan_attention

logger = logging.getLogger("diffattn.kernels")

BACKENDS = ("auto", "triton", "cpu", "reference")

__all__ = [
    "BACKENDS",
    "AxisTiling",
    "BlockPlan",
    "attend_extra",
    "block_sparse_attention",
    "choose_backend",
    "dense_attention",
    "merge_attention",
    "reference_attention",
]


def can_run_triton(q: Tensor) -> tuple[bool, str]:
    """The Triton block-sparse kernel is not in this build; say so instead of pretending."""
    if q.device.type != "cuda":
        return False, f"tensors are on {q.device.type}, triton needs CUDA tensors"
    return False, "the Triton block-sparse kernel is not part of this diffattn build yet"


def can_run_reference(q: Tensor) -> tuple[bool, str]:
    return True, "exact dense masked fp32 attention runs on any device (O(S^2) memory)"


_CHECKS = {"triton": can_run_triton, "cpu": can_run_cpu, "reference": can_run_reference}


def choose_backend(q: Tensor, backend: str = "auto") -> str:
    """Resolve ``backend`` for tensors like ``q`` (device and dtype matter).

    ``"auto"`` walks triton -> cpu -> reference and logs each rejection; an explicit backend that
    cannot run raises a ValueError saying why.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    if backend != "auto":
        ok, why = _CHECKS[backend](q)
        if not ok:
            raise ValueError(f"backend={backend!r} cannot run: {why}")
        return backend
    for name, check in _CHECKS.items():
        ok, why = check(q)
        if ok:
            # the reference is exact but O(S^2) in memory: never pick it silently
            log = logger.warning if name == "reference" else logger.info
            log("backend auto -> %s (%s)", name, why)
            return name
        logger.info("backend %s rejected: %s", name, why)
    raise AssertionError("the reference backend always runs")


def _sparse_part(q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, scale: float | None, backend: str):
    if backend == "cpu":
        return block_sparse_attention_cpu(q, k, v, plan, scale)
    if backend == "reference":
        return reference_plan_attention(q, k, v, plan, scale=scale)
    raise ValueError(f"backend={backend!r} has no block-sparse implementation in this build")


def attend_extra(
    q: Tensor, extra_k: Tensor, extra_v: Tensor, extra_mask: Tensor | None, scale: float | None, backend: str
) -> tuple[Tensor, Tensor]:
    """Dense attention of every query over extra keys (e.g. text tokens).

    q ``[B, S, H, D]``, extra_k/v ``[B, T, H, D]``, extra_mask bool ``[B, T]`` (True = valid).
    Returns ``(out [B, S, H, D], lse [B, S, H] fp32)``.
    """
    if backend == "reference" or q.device.type != "cpu":
        return reference_attention(
            q, extra_k[:, :0], extra_v[:, :0], extra_k=extra_k, extra_v=extra_v, extra_mask=extra_mask, scale=scale
        )
    bias = None
    if extra_mask is not None:
        bias = additive_mask(extra_mask, q.dtype)[:, None, None, :]  # [B, 1, 1, T]
    o, lse = sdpa_with_lse(q.transpose(1, 2), extra_k.transpose(1, 2), extra_v.transpose(1, 2), bias, scale)
    return o.transpose(1, 2), lse.transpose(1, 2)


def dense_attention(
    q: Tensor, k: Tensor, v: Tensor, *, bias: Tensor | None = None, scale: float | None = None, backend: str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Attention of every query over every key, with an optional additive logit bias.

    q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]``; bias fp32 broadcastable to ``[B, H, Sq, Sk]``
    (``-inf`` drops a pair). For short key sets (proxies, agents): ``Sq x Sk`` bias, never ``Sq x Sq``.
    Returns ``(out [B, Sq, H, D], lse [B, Sq, H] fp32)``.
    """
    if backend == "reference" or q.device.type != "cpu":
        return reference_attention(q, k, v, bias=bias, scale=scale)
    o, lse = sdpa_with_lse(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), bias, scale)
    return o.transpose(1, 2), lse.transpose(1, 2)


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
    backend: str = "auto",
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Block-sparse attention over a plan, plus optional dense extra keys, merged by log-sum-exp.

    q, k, v: ``[B, S, H, D]``, ``S == plan.num_tokens``; extra_k/v ``[B, T, H, D]``.
    Returns ``out [B, S, H, D]`` (and ``lse [B, S, H]`` fp32 if ``return_lse``).
    """
    backend = choose_backend(q, backend)
    parts = [_sparse_part(q, k, v, plan, scale, backend)]
    if extra_k is not None:
        if extra_v is None:
            raise ValueError("extra_k was given without extra_v")
        parts.append(attend_extra(q, extra_k, extra_v, extra_mask, scale, backend))
    out, lse = merge_attention(parts)
    return (out, lse) if return_lse else out
