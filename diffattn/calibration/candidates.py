"""The candidates calibration measures on one module: GNA windows per axis (and blocked strides when the cost is
the tile bound), msw and proxy windows, each as a method config plus the exact pattern it attends on a sample of
queries (which keys each sampled query sees), taken from the methods' own oracles (`methods.naive`)."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..methods import AttendCall, AttentionMethod, get_method
from ..methods.naive import gna_mask, msw_mask, proxy_window_ids
from ..methods.routed import ROUTABLE

#: methods calibration can choose between (besides dense, which is always an option)
CANDIDATE_METHODS = tuple(m for m in ROUTABLE if m != "dense")
LADDER_RATIO = math.sqrt(2)  # neighbouring windows differ by ~2x in area: 7 rungs span 8x per axis


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One config a module could run: ``method`` with ``knobs`` (per-axis tuples for windows)."""

    method: str
    knobs: tuple[tuple[str, Any], ...]

    @functools.cached_property
    def instance(self) -> AttentionMethod:
        cls = get_method(self.method)
        return cls(cls.make_config(None, **dict(self.knobs)))

    @property
    def label(self) -> str:
        from ..methods.knobs import format_knobs

        return f"{self.method} {format_knobs(self.knobs)}"

    @property
    def has_mass(self) -> bool:
        """Its keys are a subset of dense attention's, so kept mass is defined (not for proxies)."""
        return self.method != "proxy"


def window_ladder(length: int, ratio: float = LADDER_RATIO) -> list[int]:
    """Windows of one axis of ``length`` tokens: ``ratio`` apart from ``max(2, length / 8)`` up to below the axis,
    then the whole axis (that axis dense)."""
    rungs: list[int] = []
    x = 2.0
    while round(x) < length:
        w = round(x)
        if w >= max(2, length / 8) and w not in rungs:
            rungs.append(w)
        x *= ratio
    return [*rungs, length]


def _pairs(rows: list[int], cols: list[int]) -> list[tuple[int, int]]:
    """2-D windows from two axis ladders (aligned from the top: their last rung is the whole axis): rungs at most
    one apart (near-square relative to the grid) and strips (one axis whole, any rung of the other). A full product
    (~50 windows) costs twice the measuring time and adds windows whose bounds its neighbours already cover."""
    n = min(len(rows), len(cols))
    rows, cols = rows[-n:], cols[-n:]
    out = [(rows[i], cols[j]) for i in range(n) for j in range(n) if abs(i - j) <= 1 or n - 1 in (i, j)]
    return list(dict.fromkeys(out))


def gna_windows(grid: tuple[int, ...]) -> list[tuple[int, ...]]:
    """GNA windows for ``grid`` from the axes' ladders: in 2-D `_pairs`; in 3-D every rung of a coarser frame
    ladder times the aligned spatial rungs (~30 windows, not ~350); in 1-D the ladder. The all-dense window is left
    out (dense is an option of its own)."""
    ladders = [window_ladder(n) for n in grid]
    if len(grid) == 1:
        windows = [(w,) for w in ladders[0]]
    elif len(grid) == 2:
        windows = _pairs(*ladders)
    else:  # video: the spatial rungs aligned (windows proportional to the frame), frames on a ratio-2 ladder
        n = min(len(ladders[1]), len(ladders[2]))
        spatial = list(zip(ladders[1][-n:], ladders[2][-n:]))
        windows = [(f, *p) for f in window_ladder(grid[0], ratio=2.0) for p in spatial]
    return [w for w in windows if w != tuple(grid)]


def candidates_for(grid: tuple[int, ...], methods: Sequence[str], blocked: bool = False) -> list[Candidate]:
    """Every candidate of ``methods`` on a module attending ``grid``; ``blocked`` adds GNA's blocked windows
    (stride = window) beside the sliding ones (stride 1)."""
    grid = tuple(grid)
    out: list[Candidate] = []
    for method in methods:
        if method == "gna":
            for w in gna_windows(grid):
                out.append(Candidate("gna", (("stride", 1), ("window", w))))
                if blocked and any(a > 1 for a in w):
                    out.append(Candidate("gna", (("stride", w), ("window", w))))
        elif method == "msw":  # HiDiffusion's shifted windows: 2x2 (its default) and 4x4 windows per frame
            for parts in (2, 4):
                w = tuple(max(1, math.ceil(n / parts)) for n in grid)
                if len(grid) == 3:
                    w = (1, *w[1:])
                if w != grid:
                    out.append(Candidate("msw", (("window", w),)))
        elif method == "proxy":  # own window exactly + one proxy per other window
            for parts in (2, 4, 8):
                w = tuple(max(1, math.ceil(n / parts)) for n in grid)
                if w != grid and math.prod(w) > 1:
                    out.append(Candidate("proxy", (("window", w),)))
        else:
            raise ValueError(f"calibration cannot try method {method!r}; it tries {CANDIDATE_METHODS}")
    return list(dict.fromkeys(out))


@functools.lru_cache(maxsize=4096)
def _axis_mask(method: str, length: int, window: int, stride: int, shift: int) -> Tensor:
    """``[L, L]`` bool pattern of one axis, from the method's oracle (`methods.naive`) on a 1-D grid."""
    if method == "gna":
        return gna_mask((length,), (window,), (stride,), (1,))
    return msw_mask((length,), (window,), (shift,))


def sampled_rows(candidate: Candidate, grid: tuple[int, ...], positions: Tensor, call: AttendCall) -> Tensor:
    """``[n, N]`` bool: the image keys each sampled query (flat grid ``positions [n]``) attends under a GNA or msw
    ``candidate`` on this call (msw's shift is the one its own `attend` draws for the call)."""
    grid = tuple(grid)
    inst = candidate.instance
    if candidate.method == "gna":
        window, stride, _ = inst.config.resolve(grid)
        shift = (0,) * len(grid)
    elif candidate.method == "msw":
        window = inst.config.resolve_window(grid)
        stride = (1,) * len(grid)
        shift = inst.shift(call)
    else:
        raise ValueError(f"{candidate.method} has no per-key pattern (use proxy_parts)")
    coords = _coords(positions, grid)
    masks = [_axis_mask(candidate.method, n, window[a], stride[a], shift[a]) for a, n in enumerate(grid)]
    return _keys_on_every_axis([m.to(positions.device)[coords[a]] for a, m in enumerate(masks)])


def _keys_on_every_axis(parts: Sequence[Tensor]) -> Tensor:
    """Per axis ``[..., n, L_axis]`` bool (the positions each query attends on that axis) -> ``[..., n, N]``: the
    grid keys it attends, those attended on every axis (patterns separable by axis)."""
    rows = parts[0]
    for part in parts[1:]:
        rows = (rows[..., :, None] & part[..., None, :]).flatten(-2)
    return rows


@functools.lru_cache(maxsize=64)
def _gna_axis_stacks(grid: tuple[int, ...], candidates: tuple[Candidate, ...], device: str) -> list[Tensor]:
    """Per axis, ``[C, L, L]``: the axis patterns of GNA ``candidates`` on ``grid``, stacked (one gather serves all)."""
    resolved = [c.instance.config.resolve(grid) for c in candidates]
    return [
        torch.stack([_axis_mask("gna", length, w[axis], s[axis], 0) for w, s, _ in resolved]).to(device)
        for axis, length in enumerate(grid)
    ]


def stacked_rows(candidates: Sequence[Candidate], grid: tuple[int, ...], positions: Tensor, call: AttendCall) -> Tensor:
    """``[C, n, N]`` bool: `sampled_rows` of every GNA / msw candidate (GNA's all at once)."""
    grid = tuple(grid)
    out = torch.empty(len(candidates), len(positions), math.prod(grid), dtype=torch.bool, device=positions.device)
    gna = [i for i, c in enumerate(candidates) if c.method == "gna"]
    if gna:
        coords = _coords(positions, grid)
        stacks = _gna_axis_stacks(grid, tuple(candidates[i] for i in gna), str(positions.device))
        out[gna] = _keys_on_every_axis([stack[:, coords[axis]] for axis, stack in enumerate(stacks)])  # [C, n, N]
    for i, c in enumerate(candidates):
        if c.method != "gna":
            out[i] = sampled_rows(c, grid, positions, call)
    return out


def proxy_parts(candidate: Candidate, grid: tuple[int, ...], positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For a proxy ``candidate`` (mean proxies, unshifted): ``(own [n, N] bool, window_id [N], counts [W])``: the
    own-window keys of each sampled query, every token's window and the tokens per window (`naive.proxy_window_ids`)."""
    grid = tuple(grid)
    cfg = candidate.instance.config
    if cfg.proxy != "mean" or cfg.shift:
        raise ValueError("calibration measures mean, unshifted proxies only")
    ids, windows = proxy_window_ids(grid, cfg.resolve(grid), False)
    ids = ids.to(positions.device)
    counts = torch.bincount(ids, minlength=windows)
    return ids[positions][:, None] == ids[None, :], ids, counts


def _coords(positions: Tensor, grid: tuple[int, ...]) -> tuple[Tensor, ...]:
    """Per-axis coordinates of flat (frames, rows, columns order) grid positions."""
    return torch.unravel_index(positions, grid)
