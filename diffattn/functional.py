"""Functional entry points, usable without diffusers. Tensors are ``[B, S, H, D]``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .kernels import batch_item_bytes, choose_backend
from .methods.base import AttendCall
from .methods.gna import GNA, GNAConfig


def check_qkv(q: Tensor, k: Tensor, v: Tensor, extra_k: Tensor | None = None, extra_v: Tensor | None = None) -> None:
    """Validate ``[B, S, H, D]`` q/k/v (and ``[B, T, H, D]`` extra k/v): a clear error per mismatch."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, S, H, D] (4 dims), got shape {tuple(t.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k, v must share one shape [B, S, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.is_floating_point():
        raise TypeError(f"q, k, v must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must share one device; got {q.device}, {k.device}, {v.device}")
    if (extra_k is None) != (extra_v is None):
        raise ValueError("extra_k and extra_v must be given together")
    if extra_k is not None and extra_v is not None:
        b, _, h, d = q.shape
        for name, t in (("extra_k", extra_k), ("extra_v", extra_v)):
            if t.dim() != 4 or t.shape[0] != b or t.shape[2:] != (h, d):
                raise ValueError(f"{name} must be [B={b}, T, H={h}, D={d}], got shape {tuple(t.shape)}")
            if t.dtype != q.dtype or t.device != q.device:
                raise TypeError(
                    f"{name} must match q's dtype {q.dtype} and device {q.device}, got {t.dtype} on {t.device}"
                )
        if extra_k.shape != extra_v.shape:
            raise ValueError(f"extra_k {tuple(extra_k.shape)} and extra_v {tuple(extra_v.shape)} differ in shape")


def check_grid(grid: object, seq_len: int) -> tuple[int, ...]:
    """Validate a 1-3 axis grid whose product is the sequence length."""
    if isinstance(grid, int):
        grid = (grid,)
    if not isinstance(grid, tuple | list) or not 1 <= len(grid) <= 3:
        raise ValueError(f"grid={grid!r} must be a tuple of 1 to 3 positive ints")
    if any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
        raise ValueError(f"grid={grid!r} must hold positive ints")
    if math.prod(grid) != seq_len:
        raise ValueError(f"grid={tuple(grid)} has {math.prod(grid)} tokens but q has S={seq_len}")
    return tuple(grid)


def gna(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    grid: tuple[int, ...],
    window: int | tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    dilation: int | tuple[int, ...] = 1,
    extra_k: Tensor | None = None,
    extra_v: Tensor | None = None,
    backend: str = "auto",
    *,
    extra_mask: Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    check_finite: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Generalized Neighborhood Attention (NATTEN 0.21 ``na{1,2,3}d`` semantics, non-causal).

    Args:
        q, k, v: ``[B, S, H, D]`` with ``S = prod(grid)`` in grid order (frames, rows, columns).
        grid: token grid, 1-3 axes, any sizes.
        window, stride, dilation: per axis (int = every axis). A window larger than an axis is
            clamped to it (that axis becomes dense); stride must be in [1, window].
        extra_k, extra_v: ``[B, T, H, D]`` keys/values every query attends (e.g. text tokens).
        backend: "auto", "cpu", "reference" (or "triton" where available).
        extra_mask: bool ``[B, T]`` key padding of the extra keys (True = attend).
        scale: softmax scale, default ``D ** -0.5``.
        return_lse: also return the log-sum-exp ``[B, S, H]`` (fp32).
        check_finite: first check q/k/v (and extra_k/v) for NaN or Inf and raise a ValueError naming the
            tensor: a debugging aid that costs one pass over the data, so off by default. Without it, NaN
            or Inf is never removed: every query that attends it gets NaN (on the cpu and triton backends
            also the other queries of its tile).

    Returns:
        ``out [B, S, H, D]`` (and ``lse`` if asked).
    """
    check_qkv(q, k, v, extra_k, extra_v)
    if extra_mask is not None and (extra_k is None or extra_mask.shape != extra_k.shape[:2]):
        want = "no extra_k was given" if extra_k is None else f"expected [B, T] = {tuple(extra_k.shape[:2])}"
        raise ValueError(f"extra_mask of shape {tuple(extra_mask.shape)} does not fit: {want}")
    grid = check_grid(grid, q.shape[1])
    cfg = GNAConfig(window=window, stride=stride, dilation=dilation)
    if cfg.ndim is not None and cfg.ndim != len(grid):
        raise ValueError(
            f"window={window}, stride={stride}, dilation={dilation} do not match the {len(grid)}-D grid {grid}"
        )
    if check_finite:
        _check_finite(q=q, k=k, v=v, extra_k=extra_k, extra_v=extra_v)
    method = GNA(cfg)
    chosen = choose_backend(q, backend)  # once per call: the kernels do not check again
    call = AttendCall(grid=grid, extra_k=extra_k, extra_v=extra_v, extra_mask=extra_mask, scale=scale, backend=chosen)
    plan = method.plan(grid, chosen, batch_item_bytes(q))
    return method.plan_attention(q, k, v, plan, call, return_lse=return_lse)


def _check_finite(**tensors: Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ValueError(f"gna: {name} contains NaN or Inf (check_finite=True)")
