"""Each method's exact, slow definition: the oracles that tests, fuzzing and benchmarks check against.

These build dense masks, brute-force key sets or closed forms straight from each method's definition,
independently of the plans, layouts and pooling the methods compute with. ``O(S^2)`` memory: small
shapes only. Tensors are ``[B, S, H, D]`` in grid order; ``extra`` is ``(extra_k [B, T, H, D],
extra_v [B, T, H, D], extra_mask bool [B, T] or None)``, keys every query also attends (text).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..kernels import reference_attention

Extra = tuple[Tensor, Tensor, Tensor | None]


def _kron_masks(axis_masks: list[Tensor]) -> Tensor:
    """``[N, N]`` mask of a grid from one ``[L, L]`` mask per axis (a pair attends iff it does on every axis)."""
    mask = torch.ones((1, 1), dtype=torch.bool)
    for axis in axis_masks:
        n, length = mask.shape[0], axis.shape[0]
        mask = (mask[:, None, :, None] & axis[None, :, None, :]).reshape(n * length, n * length)
    return mask


def gna_mask(
    grid: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
) -> Tensor:
    """``[N, N]`` bool GNA mask (NATTEN 0.21 ``na{1,2,3}d``, non-causal) for resolved (clamped) parameters.

    Per axis: dilation group ``x % d``, stride-group leader clipped to the group, window start
    ``clamp(leader - K // 2, 0, L_g - K)``; see `diffattn.methods.gna`.
    """
    axes = []
    for length, k, s, d in zip(grid, window, stride, dilation):
        x = torch.arange(length)
        g, xc = x % d, x // d
        group_len = (length - g + d - 1) // d
        leader = torch.minimum((xc // s) * s + s // 2, group_len - 1)
        start = (leader - k // 2).clamp_min(0)
        start = torch.minimum(start, group_len - k)
        axes.append((g[:, None] == g[None, :]) & (xc[None, :] >= start[:, None]) & (xc[None, :] < start[:, None] + k))
    return _kron_masks(axes)


def msw_mask(grid: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...]) -> Tensor:
    """``[N, N]`` bool mask of cyclically shifted non-overlapping windows (HiDiffusion MSW-MSA).

    On each axis of length L, a token at p sits at r = (p - shift) mod L in the rolled grid; rolled
    queries form groups of ``w`` and attend the ``w`` rolled keys from min(group start, L - w)
    (the last window is clamped inside the axis).
    """
    axes = []
    for length, w, s in zip(grid, window, shift):
        r = (torch.arange(length) - s) % length
        start = torch.clamp((r // w) * w, max=length - w)
        axes.append((r[None, :] >= start[:, None]) & (r[None, :] < start[:, None] + w))
    return _kron_masks(axes)


def hidiffusion_shift(window: tuple[int, ...], quarter: int) -> tuple[int, ...]:
    """HiDiffusion's cyclic shift for draw ``quarter`` (0-3), literally: ``window // 4 * quarter`` per axis
    (its ``shift_size = (widow_size[0]//4*k, widow_size[1]//4*k)``). Axes the window covers need no zeroing:
    a roll inside a single window leaves `msw_mask` unchanged."""
    return tuple(w // 4 * quarter for w in window)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, extra: Extra | None = None,
                     scale: float | None = None) -> Tensor:  # fmt: skip
    """Exact fp32 softmax attention over the image keys ``mask`` allows (``[N, N]``, None = all) plus every
    ``extra`` key; output in q's dtype."""
    ek, ev, em = extra if extra is not None else (None, None, None)
    return reference_attention(q, k, v, mask, extra_k=ek, extra_v=ev, extra_mask=em, scale=scale)[0]


def proxy_window_ids(grid: tuple[int, ...], window: tuple[int, ...], shifted: bool) -> tuple[Tensor, int]:
    """``([N] window index of every token, number of windows)`` for windows ``[0, w), [w, 2w), ...`` per
    axis (``w`` clamped to the axis), offset by ``w // 2`` when ``shifted`` (axes the window covers never shift)."""
    ids, total = torch.zeros((), dtype=torch.long), 1
    for length, w in zip(grid, window):
        w = min(w, length)
        off = w // 2 if shifted and w < length else 0
        x = torch.arange(length)
        axis = x // w if off == 0 else torch.where(x < off, 0, 1 + (x - off) // w)
        count = int(axis.max()) + 1
        ids = (ids[..., None] * count + axis).reshape(-1)
        total *= count
    return ids, total


def proxy_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    grid: tuple[int, ...],
    window: tuple[int, ...],
    shifted: bool,
    proxy_index: Tensor | None = None,
    extra: Extra | None = None,
    scale: float | None = None,
) -> Tensor:
    """Proxy attention by brute force: one dense softmax over keys = every token (own window only) +
    every window's proxy (other windows only, logit bias ``log(window size)``) + ``extra``.

    Proxies are window means of k and v, or the tokens ``proxy_index [W]`` (sampled proxies).
    """
    ids, w = proxy_window_ids(grid, window, shifted)
    n = ids.numel()
    counts = torch.bincount(ids, minlength=w)
    if proxy_index is None:
        pk = torch.stack([k[:, ids == j].float().mean(1) for j in range(w)], 1).to(k.dtype)
        pv = torch.stack([v[:, ids == j].float().mean(1) for j in range(w)], 1).to(v.dtype)
    else:
        pk, pv = k[:, proxy_index], v[:, proxy_index]
    own = ids[:, None] == ids[None, :]  # [N, N]
    other = ids[:, None] != torch.arange(w)[None, :]  # [N, W]
    mask = torch.cat([own, other], 1)
    bias = torch.cat([torch.zeros(n, n), torch.log(counts.float())[None].expand(n, w)], 1)
    ek, ev, em = extra if extra is not None else (None, None, None)
    out, _ = reference_attention(
        q, torch.cat([k, pk], 1), torch.cat([v, pv], 1), mask, bias=bias, extra_k=ek, extra_v=ev, extra_mask=em,
        scale=scale,
    )  # fmt: skip
    return out


def softmax_attention_fp64(q: Tensor, k: Tensor, v: Tensor, scale: float, key_mask: Tensor | None = None) -> Tensor:
    """Plain ``softmax(q k^T scale) v`` in fp64 with explicit matrices; ``key_mask`` bool ``[B, Sk]`` (True = valid)."""
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * scale
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.double())


def agent_pool_matrix(length: int, n: int) -> Tensor:
    """``[n, length]`` fp64 averaging matrix of adaptive pooling bins ``[floor(i L / n), ceil((i + 1) L / n))``."""
    p = torch.zeros(n, length, dtype=torch.float64)
    for i in range(n):
        lo, hi = (i * length) // n, -((-(i + 1) * length) // n)
        p[i, lo:hi] = 1.0 / (hi - lo)
    return p


def agent_pooled_queries(q: Tensor, grid: tuple[int, ...], agent_grid: tuple[int, ...]) -> Tensor:
    """Agents ``[B, prod(agent_grid), H, D]`` (fp64): ``q`` averaged by explicit per-axis pooling matrices."""
    b, _, h, d = q.shape
    x = q.double().reshape(b, *grid, h, d)
    for axis, (length, n) in enumerate(zip(grid, agent_grid)):
        x = torch.movedim(
            torch.tensordot(agent_pool_matrix(length, n), torch.movedim(x, 1 + axis, 0), dims=1), 0, 1 + axis
        )
    return x.reshape(b, math.prod(agent_grid), h, d)


def agent_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    agents: Tensor,
    scale: float,
    power: float,
    shortcut: float,
    extra: Extra | None = None,
) -> Tensor:
    """Agent attention's closed form (fp64): ``V_A = softmax(A [K; K_text]^T s) [V; V_text]``,
    ``out = softmax(Q A^T s^power) V_A + shortcut * V``."""
    key_mask, v_all = None, v
    if extra is not None:
        tk, tv, tm = extra
        tm = torch.ones(tk.shape[:2], dtype=torch.bool) if tm is None else tm
        key_mask = torch.cat([torch.ones(k.shape[0], k.shape[1], dtype=torch.bool), tm], 1)
        k, v_all = torch.cat([k, tk], 1), torch.cat([v, tv], 1)
    agent_v = softmax_attention_fp64(agents, k, v_all, scale, key_mask)
    return softmax_attention_fp64(q, agents, agent_v, scale**power) + shortcut * v.double()


def freeswim_mask(grid: tuple[int, ...], train: tuple[int, ...]) -> Tensor:
    """``[N, N]`` bool mask of FreeSwim's inward sliding window, from its own formula: on each of the last
    ``len(train)`` axes (rows, columns) a query at q attends keys in ``[q - d - d_u, q + d + d_b]`` with
    half-width ``d = train // 2`` and the inward shifts ``d_b = max(d - q, 0)``, ``d_u = max(d + q - L + 1, 0)``
    at the borders; earlier axes (frames) are not restricted."""
    spatial = len(train)
    axes = []
    for i, length in enumerate(grid):
        if i < len(grid) - spatial:
            axes.append(torch.ones(length, length, dtype=torch.bool))
            continue
        d = train[i - (len(grid) - spatial)] // 2
        q = torch.arange(length)[:, None]
        kv = torch.arange(length)[None, :]
        d_b = (d - q).clamp_min(0)
        d_u = (d + q - length + 1).clamp_min(0)
        axes.append((kv <= q + d + d_b) & (kv >= q - d - d_u))
    return _kron_masks(axes)
