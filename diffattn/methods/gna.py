"""Generalized Neighborhood Attention (GNA): sliding, strided, blocked and dilated windows.

Semantics are exactly NATTEN 0.21's ``na1d/na2d/na3d`` with ``is_causal=False``. Per axis of
length ``L`` with window ``K``, stride ``s`` and dilation ``d``:
  - tokens split into ``d`` dilation groups (``x % d``), each a sub-axis of ``L_g`` tokens;
  - inside a group, queries form stride groups of ``s``; the group's leader is its centre query
    (right-hand centre for even ``s``), clipped to the sub-axis;
  - every query of the stride group attends the ``K`` consecutive group tokens starting at
    ``clamp(leader - K // 2, 0, L_g - K)``.
Stride 1 is sliding-window neighborhood attention, stride = window is blocked attention and a
window covering the axis is dense. One config serves every resolution: a window larger than an
axis is clamped to it (that axis becomes dense).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import torch
from torch import Tensor

from ..kernels import AxisTiling, Backend, BlockPlan, batch_item_bytes
from .base import AttendCall, AttentionMethod, FlopBound, axis_ints, pairs_bound, per_axis
from .naive import gna_mask, masked_attention
from .registry import register_method

IntOrTuple = int | tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class GNAConfig:
    """GNA knobs, per axis (an int applies to every axis).

    window: neighborhood size per axis, >= 1 (clamped to the axis where larger).
    stride: queries sharing one neighborhood per axis, 1 <= stride <= window.
    dilation: spacing between attended tokens per axis, >= 1; ``window * dilation`` must fit the
        axis unless the window covers the whole axis.
    """

    window: IntOrTuple
    stride: IntOrTuple = 1
    dilation: IntOrTuple = 1

    def __post_init__(self) -> None:
        w = axis_ints("window", self.window)
        s = axis_ints("stride", self.stride)
        d = axis_ints("dilation", self.dilation)
        lengths = {len(x) for x in (w, s, d)} - {1}
        if len(lengths) > 1:
            raise ValueError(
                f"window={self.window}, stride={self.stride}, dilation={self.dilation} disagree on the number of axes"
            )
        ndim = max(len(w), len(s), len(d))
        for wi, si in zip(per_axis("window", w, ndim), per_axis("stride", s, ndim)):
            if si > wi:
                raise ValueError(f"stride={self.stride} exceeds window={self.window}; stride must be in [1, window]")
        for name, value in (("window", w), ("stride", s), ("dilation", d)):
            object.__setattr__(self, name, value if len(value) > 1 else value[0])

    @property
    def ndim(self) -> int | None:
        """Number of axes fixed by the config, None if every knob is a plain int."""
        sizes = [len(x) for x in (self.window, self.stride, self.dilation) if isinstance(x, tuple)]
        return sizes[0] if sizes else None

    def resolve(self, grid: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Per-axis (window, stride, dilation) for ``grid`` after clamping to the grid.

        An axis the window covers becomes dense (window = axis, stride = dilation = 1).
        """
        ndim = len(grid)
        w = per_axis("window", axis_ints("window", self.window), ndim)
        s = per_axis("stride", axis_ints("stride", self.stride), ndim)
        d = per_axis("dilation", axis_ints("dilation", self.dilation), ndim)
        win, st, dil = [], [], []
        for axis, (length, wi, si, di) in enumerate(zip(grid, w, s, d)):
            if wi >= length:
                win.append(length), st.append(1), dil.append(1)
                continue
            if wi * di > length:
                raise ValueError(
                    f"window {wi} x dilation {di} = {wi * di} exceeds axis {axis} of the grid {grid} "
                    f"(length {length}); dilation must be <= {length // wi} there"
                )
            win.append(wi), st.append(si), dil.append(di)
        return tuple(win), tuple(st), tuple(dil)


def _window_starts(group_len: int, window: int, stride: int) -> list[int]:
    """Start (in dilation-group coordinates) of the window of each stride group."""
    starts = []
    for j in range(math.ceil(group_len / stride)):
        leader = min(j * stride + stride // 2, group_len - 1)
        starts.append(min(max(leader - window // 2, 0), group_len - window))
    return starts


def gna_axis_window_starts(group_len: int, window: int, stride: int) -> Tensor:
    """``[group_len]`` int64: start of each token's window, in dilation-group coordinates.

    Token ``c`` of a dilation group attends group tokens ``[start[c], start[c] + window)``.
    """
    return torch.tensor(_window_starts(group_len, window, stride), dtype=torch.long).repeat_interleave(stride)[
        :group_len
    ]


def gna_axis_tiling(length: int, window: int, stride: int, dilation: int, q_tile: int) -> AxisTiling:
    """1-D GNA tiling of one axis. Consecutive stride groups are merged into query tiles of about
    ``q_tile`` tokens; a tile whose groups share one window needs no mask."""
    tiles = []
    # Merge small stride groups (their key boxes overlap, so gathering them once per tile saves
    # copies); a group of at least half a tile is big enough alone and then needs no mask.
    groups_per_tile = 1 if 2 * stride >= q_tile else q_tile // stride
    if window == length:  # dense axis: one tile, no duplicated key gathers
        groups_per_tile = length
    for g in range(dilation):
        group_len = len(range(g, length, dilation))
        starts = _window_starts(group_len, window, stride)
        for j0 in range(0, len(starts), groups_per_tile):
            js = range(j0, min(j0 + groups_per_tile, len(starts)))
            q_c = [c for j in js for c in range(j * stride, min(j * stride + stride, group_len))]
            lo, hi = starts[js[0]], starts[js[-1]] + window
            kv_c = list(range(lo, hi))
            rows = None
            if starts[js[0]] != starts[js[-1]]:
                q_start = torch.tensor([starts[c // stride] for c in q_c])[:, None]
                kv = torch.tensor(kv_c)[None, :]
                rows = (kv >= q_start) & (kv < q_start + window)
            tiles.append(([g + dilation * c for c in q_c], [g + dilation * c for c in kv_c], rows))
    return AxisTiling.from_lists(length, tiles)


def default_q_tile(ndim: int) -> tuple[int, ...]:
    """Query tile per axis for small strides when the backend has no cost model (triton; msw and freeswim
    plans): 16x16 per frame; one frame per tile in 3-D."""
    return {1: (256,), 2: (16, 16), 3: (1, 16, 16)}[ndim]


def _tile_sides(length: int) -> list[int]:
    """Candidate query tiles of one axis: powers of two up to the axis, and the whole axis."""
    sides = [1 << i for i in range(max(1, length).bit_length()) if 1 << i < length]
    return [*sides, length]


@functools.lru_cache(maxsize=256)
def gna_q_tile(
    grid: tuple[int, ...],
    window: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    backend: Backend | None = None,
    item_bytes: int = 0,
) -> tuple[int, ...]:
    """The query tile per axis for resolved GNA parameters on ``backend``, for calls whose q holds ``item_bytes``
    per batch item (`batch_item_bytes`; 0: unknown): among powers of two up to each axis (and the whole axis),
    the combination whose plan ``backend.tiling_cost`` models cheapest. Small windows get small tiles: a tile's
    keys are its queries widened by the window, so every query computes ``prod(tile + window - 1)`` scores
    while the per-tile costs favour fewer, larger tiles. Backends without a model (triton, reference) and
    ``backend=None`` get `default_q_tile`. Cached per shape."""
    default = default_q_tile(len(grid))
    if backend is None:
        return default
    axes = [gna_axis_tiling(*args) for args in zip(grid, window, stride, dilation, default)]
    if backend.tiling_cost(axes, item_bytes) is None:  # no model: no candidate tilings to build
        return default
    per_axis = []
    for length, w, s, d in zip(grid, window, stride, dilation):
        options: dict[tuple[int, int, int], tuple[int, AxisTiling]] = {}  # (tiles, query slots, key slots) -> first
        for side in _tile_sides(length):
            axis = gna_axis_tiling(length, w, s, d, side)
            options.setdefault((axis.num_tiles, axis.q_pos.shape[1], axis.kv_pos.shape[1]), (side, axis))
        per_axis.append(list(options.values()))

    def cost(combo: tuple[tuple[int, AxisTiling], ...]) -> float:
        value = backend.tiling_cost([axis for _, axis in combo], item_bytes)
        assert value is not None  # the backend has a model (above)
        return value

    best = min(itertools.product(*per_axis), key=cost)
    return tuple(side for side, _ in best)


@functools.lru_cache(maxsize=256)
def gna_plan(
    grid: tuple[int, ...],
    window: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    q_tile: tuple[int, ...] | None = None,
) -> BlockPlan:
    """The `BlockPlan` of resolved (clamped) GNA parameters on ``grid`` with query tile ``q_tile`` per axis
    (None: `default_q_tile`; `gna_q_tile` chooses one for a backend). Cached per shape."""
    q_tile = default_q_tile(len(grid)) if q_tile is None else q_tile
    axes = tuple(gna_axis_tiling(*args) for args in zip(grid, window, stride, dilation, q_tile))
    return BlockPlan.from_axes(axes, gna=tuple(zip(window, stride, dilation)))


@register_method
class GNA(AttentionMethod):
    """Generalized Neighborhood Attention (NATTEN 0.21 semantics) over the image token grid."""

    name = "gna"
    Config = GNAConfig

    def flop_bound(self, grid: tuple[int, ...], extra_tokens: int = 0) -> FlopBound:
        """Token-level bound: every query attends ``prod(window)`` image keys (after clamping)."""
        window = math.prod(self.config.resolve(tuple(grid))[0])
        return pairs_bound(grid, extra_tokens, math.prod(grid) * (window + extra_tokens), f"N / window {window}")
    example_knobs = {"window": 3}
    invalid_knobs = (
        ({"window": 0}, ValueError, r"window=0 must be >= 1"),
        ({"window": 2.5}, TypeError, r"window=2.5 must hold ints"),
        ({"window": (1, 2, 3, 4)}, ValueError, r"window=\(1, 2, 3, 4\) must be an int or a tuple of 1 to 3 ints"),
        ({"window": 2, "stride": 3}, ValueError, r"stride=3 exceeds window=2; stride must be in \[1, window\]"),
        ({"window": (3, 3), "stride": (1, 1, 1)}, ValueError, r"disagree on the number of axes"),
        ({"window": 3, "dilation": 0}, ValueError, r"dilation=0 must be >= 1"),
    )

    def plan(self, grid: tuple[int, ...], backend: Backend | None = None, item_bytes: int = 0) -> BlockPlan:
        """The plan of this config on ``grid``, with the query tile ``backend`` runs fastest for q of
        ``item_bytes`` per batch item (`gna_q_tile`; None: the default tile)."""
        grid = tuple(grid)
        resolved = self.config.resolve(grid)
        return gna_plan(grid, *resolved, gna_q_tile(grid, *resolved, backend, item_bytes))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        out = self.plan_attention(q, k, v, self.plan(call.grid, call.backend, batch_item_bytes(q)), call)
        assert isinstance(out, Tensor)
        return out

    def oracle(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        grid = tuple(call.grid)
        mask = gna_mask(grid, *self.config.resolve(grid))
        return masked_attention(q, k, v, mask, (call.extra_k, call.extra_v, call.extra_mask), call.scale)

    @classmethod
    def dense_limit(cls, grid: tuple[int, ...]) -> GNAConfig:
        return GNAConfig(window=max(grid))  # a window covering every axis
