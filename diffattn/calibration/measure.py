"""Measuring candidates against dense attention on one call, from a sample of its queries.

For sampled queries ``i`` (all heads, a few batch rows), the dense scores over every image key and every text key
are computed once; a candidate pattern ``P`` then gives, exactly and in fp32,

- kept mass ``exp(lse_P(i) - lse_dense(i)) = Z_P(i) / Z(i)`` (text keys count in both: every method attends them),
- output error ``||o_P - o_dense|| / ||o_dense||`` over the sampled queries, heads and rows.

Cost per call: one ``[rows, H, n, N]`` score matrix, then per candidate one masked sum and one ``[n, N] x [N, D]``
product per row and head; never ``N x N``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from ..methods import AttendCall
from .candidates import Candidate, proxy_parts, stacked_rows


@dataclasses.dataclass(frozen=True)
class CallMeasure:
    """One call's measurements: per candidate, ``error [C]`` and ``mass [C]`` (NaN where a candidate has no kept
    mass), and per head ``head_error [C, H]`` and ``head_mass [C, H]``."""

    error: Tensor
    mass: Tensor
    head_error: Tensor
    head_mass: Tensor


def batch_rows(batch: int, rows: int) -> list[int]:
    """At most ``rows`` batch rows, spread from the first to the last (with batched CFG ``[uncond, cond]``,
    both halves)."""
    if batch <= rows:
        return list(range(batch))
    return sorted({round(i * (batch - 1) / (rows - 1)) for i in range(rows)}) if rows > 1 else [batch - 1]


def sample_positions(tokens: int, n: int, generator: torch.Generator, device: torch.device | str) -> Tensor:
    """``min(n, tokens)`` distinct flat grid positions, uniformly at random."""
    if n >= tokens:
        return torch.arange(tokens, device=device)
    return torch.randperm(tokens, generator=generator)[:n].sort().values.to(device)


@torch.no_grad()
def measure_call(
    q: Tensor, k: Tensor, v: Tensor, call: AttendCall, candidates: Sequence[Candidate], positions: Tensor,
    rows: Sequence[int],
) -> CallMeasure:
    """Measure ``candidates`` on the sampled queries ``positions`` of batch ``rows``.

    q, k, v: ``[B, N, H, D]`` image tokens of the call (grid order); ``call``: its grid, text keys and scale.
    """
    grid = tuple(call.grid)
    idx = torch.as_tensor(list(rows), device=q.device)
    scale = q.shape[-1] ** -0.5 if call.scale is None else call.scale
    qs = q.index_select(0, idx)[:, positions].float()  # [b, n, H, D]
    kk = k.index_select(0, idx).float().transpose(1, 2)  # [b, H, N, D]
    vv = v.index_select(0, idx).float().transpose(1, 2)
    qh = qs.transpose(1, 2)  # [b, H, n, D]
    scores = (qh @ kk.transpose(-1, -2)) * scale  # [b, H, n, N]
    peak = scores.amax(-1, keepdim=True)
    text_z = text_num = None
    if call.extra_k is not None and call.extra_v is not None:
        tk = call.extra_k.index_select(0, idx).float().transpose(1, 2)  # [b, H, T, D]
        tv = call.extra_v.index_select(0, idx).float().transpose(1, 2)
        ts = (qh @ tk.transpose(-1, -2)) * scale  # [b, H, n, T]
        if call.extra_mask is not None:
            valid = call.extra_mask.index_select(0, idx)[:, None, None, :]
            ts = ts.masked_fill(~valid, float("-inf"))
        peak = torch.maximum(peak, ts.amax(-1, keepdim=True))
        te = torch.exp(ts - peak)
        text_z, text_num = te.sum(-1), te @ tv
    e = torch.exp(scores - peak)  # [b, H, n, N]; <= 1
    z = e.sum(-1)
    num = e @ vv
    if text_z is not None:
        z, num = z + text_z, num + text_num
    dense = num / z[..., None]  # [b, H, n, D]
    norm = dense.square().sum(dim=(0, 2, 3))  # [H]
    sq = torch.empty(len(candidates), norm.shape[0], device=q.device)  # squared error per candidate and head
    masses = torch.full_like(sq, float("nan"))

    def record(which: list[int], zc: Tensor, numc: Tensor) -> None:
        """zc ``[c, b, H, n]``, numc ``[c, b, H, n, D]`` of the candidates ``which`` (image keys only)."""
        if text_z is not None:
            zc, numc = zc + text_z, numc + text_num
        out = numc / zc[..., None]
        sq[which] = (out - dense).square().sum(dim=(1, 3, 4))
        masses[which] = (zc / z).mean(dim=(1, 3))

    masked = [i for i, c in enumerate(candidates) if c.has_mass]
    if masked:
        rows_all = stacked_rows([candidates[i] for i in masked], grid, positions, call)  # [c, n, N]
        per = e.numel() * 4  # bytes of one candidate's masked scores; chunks of ~64 MB
        step = max(1, (64 << 20) // per)
        for a in range(0, len(masked), step):
            ec = e * rows_all[a : a + step, None, None]  # [c, b, H, n, N]
            record(masked[a : a + step], ec.sum(-1), ec @ vv)
    for i, cand in enumerate(candidates):
        if cand.has_mass:
            continue
        own, ids, counts = proxy_parts(cand, grid, positions)
        ec = e * own
        # proxies: window means of k and v; logit bias log(tokens in the window); none for the own window
        pk = torch.zeros(kk.shape[0], kk.shape[1], len(counts), kk.shape[-1], device=q.device)
        pk.index_add_(2, ids, kk).div_(counts[:, None].float())
        pv = torch.zeros_like(pk).index_add_(2, ids, vv).div_(counts[:, None].float())
        ps = (qh @ pk.transpose(-1, -2)) * scale + torch.log(counts.float())
        ps = ps.masked_fill(ids[positions][:, None] == torch.arange(len(counts), device=q.device), float("-inf"))
        pe = torch.exp(ps - peak)  # proxy logit <= max key logit + log(count): no overflow
        record([i], (ec.sum(-1) + pe.sum(-1))[None], (ec @ vv + pe @ pv)[None])
        masses[i] = float("nan")  # proxies are not a subset of dense attention: no kept mass
    sq, norm = sq.cpu(), norm.cpu().clamp_min(1e-30)  # [C, H], [H]
    head_mass = masses.cpu()
    return CallMeasure((sq.sum(-1) / norm.sum()).sqrt(), head_mass.mean(-1), (sq / norm).sqrt(), head_mass)
