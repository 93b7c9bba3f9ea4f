"""Kernels: *how* a `BlockPlan` is computed. Methods never look past this module's functions.

Backends, in the order ``"auto"`` tries them:
  - ``"triton"``: block-sparse flash attention on CUDA tensors (`triton_bsa.py`, imported lazily so
    that diffattn imports and runs without triton);
  - ``"cpu"``: tile gather + batched SDPA (`cpu.py`);
  - ``"reference"``: exact dense masked fp32 (`reference.py`), any device, small shapes only.
The choice is made once (at patch time, or per functional call) from ordered ``can_run_*`` checks
that each log why they reject; nothing switches backends inside a forward pass.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from types import ModuleType

import torch
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


@functools.lru_cache(maxsize=1)
def _import_triton_bsa() -> tuple[ModuleType | None, str]:
    """The triton kernel module, or None and why it cannot be imported (tried once per process)."""
    try:
        return importlib.import_module(".triton_bsa", __name__), ""
    except ImportError as e:  # triton missing, or a triton too old for the kernel
        return None, f"{type(e).__name__}: {e}"


@functools.lru_cache(maxsize=1)
def _triton_installed() -> bool:
    # cached: the check runs on every block-sparse call and a find_spec costs ~45 us
    return importlib.util.find_spec("triton") is not None


def can_run_triton(q: Tensor) -> tuple[bool, str]:
    """Whether the Triton kernel can run on tensors like ``q``; the reason when it cannot."""
    if not _triton_installed():
        return False, "triton is not importable (not installed); pip install triton (Linux x86_64/aarch64)"
    if q.device.type != "cuda":
        return False, f"tensors are on {q.device.type}, triton needs CUDA tensors"
    module, why = _import_triton_bsa()  # only now: importing triton takes a second
    if module is None:
        return False, f"triton is not importable ({why})"
    if q.dtype not in module.SUPPORTED_DTYPES:
        return False, f"dtype {q.dtype} is not one of float16, bfloat16, float32"
    if q.dim() == 4 and q.shape[-1] > module.MAX_HEAD_DIM:
        return False, f"head dim {q.shape[-1]} exceeds {module.MAX_HEAD_DIM}"
    if torch.version.hip is None:  # CUDA: triton needs Volta+, bf16 needs Ampere+
        major, minor = torch.cuda.get_device_capability(q.device)
        if major < 7:
            return False, f"GPU compute capability {major}.{minor} is below 7.0, the minimum for triton"
        if q.dtype == torch.bfloat16 and major < 8:
            return False, f"bfloat16 needs compute capability >= 8.0, this GPU has {major}.{minor}"
    return True, "CUDA tensors of a supported dtype and head dim"


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


def _sparse_part(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    plan: BlockPlan,
    scale: float | None,
    backend: str,
    extra: tuple[Tensor, Tensor, Tensor | None] | None = None,
) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` over the plan's keys; the triton kernel also folds in ``extra`` (k, v, mask)
    in the same pass, the other backends leave it to `attend_extra` + `merge_attention`."""
    if backend == "triton":
        module, _ = _import_triton_bsa()
        assert module is not None, "choose_backend accepted triton"
        ek, ev, em = extra if extra is not None else (None, None, None)
        return module.block_sparse_attention_triton(q, k, v, plan, extra_k=ek, extra_v=ev, extra_mask=em, scale=scale)
    if backend == "cpu":
        return block_sparse_attention_cpu(q, k, v, plan, scale)
    if backend == "reference":
        return reference_plan_attention(q, k, v, plan, scale=scale)
    raise ValueError(f"backend={backend!r} has no block-sparse implementation")


def attend_extra(
    q: Tensor, extra_k: Tensor, extra_v: Tensor, extra_mask: Tensor | None, scale: float | None, backend: str
) -> tuple[Tensor, Tensor]:
    """Dense attention of every query over extra keys (e.g. text tokens).

    q ``[B, S, H, D]``, extra_k/v ``[B, T, H, D]``, extra_mask bool ``[B, T]`` (True = valid).
    Returns ``(out [B, S, H, D], lse [B, S, H] fp32)``. Never O(S^2) except on the reference backend.
    """
    if backend == "triton":
        module, _ = _import_triton_bsa()
        assert module is not None, "choose_backend accepted triton"
        return module.dense_extra_attention_triton(q, extra_k, extra_v, extra_mask, scale)
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
    Returns ``(out [B, Sq, H, D], lse [B, Sq, H] fp32)``. Without a bias it is `attend_extra`, so
    on triton it never materializes scores; with a bias off the CPU it is the exact ``Sq x Sk`` reference.
    """
    if bias is None and backend == "triton":
        return attend_extra(q, k, v, None, scale, backend)
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
    if extra_k is not None and extra_v is None:
        raise ValueError("extra_k was given without extra_v")
    if backend == "triton":  # one kernel pass over window and text keys: nothing to merge
        extra = (extra_k, extra_v, extra_mask) if extra_k is not None and extra_v is not None else None
        out, lse = _sparse_part(q, k, v, plan, scale, backend, extra)
        return (out, lse) if return_lse else out
    parts = [_sparse_part(q, k, v, plan, scale, backend)]
    if extra_k is not None and extra_v is not None:
        parts.append(attend_extra(q, extra_k, extra_v, extra_mask, scale, backend))
    out, lse = merge_attention(parts)
    return (out, lse) if return_lse else out
