"""`StripLayout`: a `BlockPlan`'s key boxes read in place from strips, so that the CPU engine gathers each key
once per strip instead of once per tile.

Where every tile's keys are, on every axis, consecutive positions (any separable plan without dilation:
GNA with any window and stride, blocked, windowed), a tile's key box is the product of one range per axis.
Cut the grid into *strips*: all positions of one axis (the *run axis*) times one tile's key range on each
other axis. Gathered run axis outermost, a strip holds the key box of every tile of its column as one
contiguous run of rows, so the tiles read their keys as overlapping strided views of the strip (one CPU flash
call per *run* of tiles whose boxes start a fixed number of rows apart) rather than as copies.

Key boxes are widened to the plan's full key length on every axis (a tile near an edge, whose window the
NATTEN rule shifts inward, gets a box clamped inside the grid): the widened slots are masked, so results
equal the plan's. The run axis is the one whose tiles duplicate the most keys (tiles x key length / axis
length), which is the factor the strips save on that axis' gathers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .plan import AxisTiling, BlockPlan, outer_and, product_index


@dataclasses.dataclass(frozen=True, eq=False)
class StripLayout:
    """Strips of one plan (see the module docstring). ``T`` tiles in strip order (strip-major, then the run
    axis' tiles), ``Tq`` query slots and ``R = box_rows * row_tokens`` key slots per tile.

    run_axis: the axis whose every position a strip holds; box_rows: key positions of a tile on it.
    row_tokens: tokens per strip row (the product of the other axes' key lengths).
    strip_tokens ``[num_strips, length(run_axis) * row_tokens]``: token of each strip slot.
    tile_start ``[T]``: first strip row of each tile's key box (its box is rows ``start : start + box_rows``).
    q_index ``[T, Tq]``: query token of each slot (``num_tokens`` = padding).
    masks ``[G, Tq, R]`` bool (key slots in strip order), with tile_group ``[T]``; None when every tile is full.
    runs: ``(t0, t1, step)``: tiles ``t0:t1`` of one strip whose boxes start ``step`` rows apart.
    """

    run_axis: int
    box_rows: int
    row_tokens: int
    strip_tokens: Tensor
    tile_start: Tensor
    q_index: Tensor
    masks: Tensor | None
    tile_group: Tensor | None
    runs: tuple[tuple[int, int, int], ...]

    @property
    def num_tiles(self) -> int:
        return self.q_index.shape[0]

    @property
    def gathered_rows(self) -> int:
        """Strip rows the runs read, over all strips: each run gathers the rows from its first box to its last."""
        return _run_rows(self.runs, self.box_rows)

    def strip_of(self, tile: int) -> int:
        """The strip of tile ``tile`` (strip order)."""
        return tile // (self.num_tiles // self.strip_tokens.shape[0])


def _axis_boxes(axis: AxisTiling) -> tuple[Tensor, Tensor] | None:
    """``(start [n], bool mask [n, q_len, kv_len])``: each tile's key box, ``kv_len`` consecutive positions from
    ``start`` (clamped inside the axis), and the plan's mask moved onto it; None when some tile's keys are not
    consecutive positions."""
    pos = axis.kv_pos
    n, r = pos.shape
    slots = torch.arange(r)
    lengths = (pos >= 0).sum(1)
    first = pos[:, 0]
    live = slots[None] < lengths[:, None]
    if bool((first < 0).any()) or not bool(((pos >= 0) == live).all()):
        return None
    if not bool((pos == first[:, None] + slots)[live].all()):  # dilation or a gap
        return None
    start = first.clamp(max=axis.length - r)
    source = slots[None] - (first - start)[:, None]  # [n, R]: the plan's slot of each box slot
    inside = (source >= 0) & (source < lengths[:, None])
    q_len = axis.q_pos.shape[1]
    plan_mask = axis.mask if axis.mask is not None else live[:, None, :].expand(n, q_len, r)
    moved = torch.gather(plan_mask, 2, source.clamp(0, r - 1)[:, None, :].expand(n, q_len, r))
    return start, moved & inside[:, None, :]


def _run_rows(runs: Sequence[tuple[int, int, int]], box_rows: int) -> int:
    """Strip rows that ``runs`` read: each run from its first box to the end of its last."""
    return sum((t1 - t0 - 1) * step + box_rows for t0, t1, step in runs)


def _runs(starts: list[int]) -> list[tuple[int, int, int]]:
    """Greedy maximal runs ``(i0, i1, step)`` of consecutive boxes starting ``step`` apart."""
    runs, i = [], 0
    while i < len(starts):
        j, step = i + 1, 0
        if j < len(starts):
            step = starts[j] - starts[i]
            while j + 1 < len(starts) and starts[j + 1] - starts[j] == step:
                j += 1
            j += 1
        runs.append((i, j, step))
        i = j
    return runs


@dataclasses.dataclass(frozen=True)
class _Boxes:
    """Per axis: each tile's box start ``[n]`` and box mask ``[n, q_len, kv_len]``; the run axis and its runs."""

    starts: list[Tensor]
    masks: list[Tensor]
    run: int
    runs: list[tuple[int, int, int]]


def _boxes(axes: Sequence[AxisTiling]) -> _Boxes | None:
    boxes = [_axis_boxes(axis) for axis in axes]
    if any(b is None for b in boxes):
        return None
    nd = len(axes)
    run = max(range(nd), key=lambda a: (axes[a].num_tiles * axes[a].kv_pos.shape[1] / axes[a].length, -a))
    starts = [b[0] for b in boxes]  # type: ignore[index]
    return _Boxes(starts, [b[1] for b in boxes], run, _runs(starts[run].tolist()))  # type: ignore[index]


def strip_key_slots(axes: Sequence[AxisTiling]) -> int | None:
    """Key slots (per batch item and head) that the strips of a plan of ``axes`` gather, over all runs of all
    strips, or None when it has no strips: to weigh against the ``num_tiles * kv_len`` that the tiles gather."""
    boxes = _boxes(axes)
    if boxes is None:
        return None
    run = boxes.run
    others = [a for i, a in enumerate(axes) if i != run]
    rows = _run_rows(boxes.runs, axes[run].kv_pos.shape[1])
    return math.prod(a.num_tiles for a in others) * rows * math.prod(a.kv_pos.shape[1] for a in others)


def strip_layout(plan: BlockPlan) -> StripLayout | None:
    """The strips of ``plan``, or None when some axis' tile keys are not consecutive positions (dilation)."""
    boxes = _boxes(plan.axes)
    if boxes is None:
        return None
    starts, run = boxes.starts, boxes.run
    grid, nd = plan.grid, len(plan.axes)
    counts = [a.num_tiles for a in plan.axes]
    lengths = [a.kv_pos.shape[1] for a in plan.axes]
    others = [a for a in range(nd) if a != run]
    key_order = [run, *others]

    # tiles in strip order: the other axes' tiles (one strip each), then the run axis' tiles
    order = [*others, run]
    tile_axes = torch.cartesian_prod(*[torch.arange(counts[a]) for a in order]).reshape(-1, nd)
    tile_axes = tile_axes[:, [order.index(a) for a in range(nd)]]  # columns back in axis order
    q_index = product_index([a.q_pos for a in plan.axes], tile_axes, grid)

    # strip s: every run-axis position (outermost) times the other axes' key ranges of strip s's tiles
    strides = [math.prod(grid[a + 1 :]) for a in range(nd)]
    strip_tokens = []
    for first in tile_axes[:: counts[run]].tolist():
        token = torch.arange(grid[run]).reshape(-1, *[1] * len(others)) * strides[run]
        for k, a in enumerate(others):
            shape = [1] * nd
            shape[1 + k] = lengths[a]
            token = token + ((starts[a][first[a]] + torch.arange(lengths[a])) * strides[a]).reshape(shape)
        strip_tokens.append(token.reshape(-1))

    # masks: per axis, unique box masks -> ids; a tile's group is its tuple of ids (its mask their outer AND)
    masks = tile_group = None
    if not all(bool(m.all()) for m in boxes.masks):
        uniques, ids = [], torch.zeros(len(tile_axes), dtype=torch.long)
        for a, m in enumerate(boxes.masks):
            u, inverse = torch.unique(m.reshape(m.shape[0], -1), dim=0, return_inverse=True)
            uniques.append(u.reshape(-1, *m.shape[1:]))
            ids = ids * len(u) + inverse[tile_axes[:, a]]
        keys, tile_group = torch.unique(ids, return_inverse=True)
        per_axis = []
        for u in reversed(uniques):  # undo the mixed-radix key, last axis first
            per_axis.insert(0, keys % len(u))
            keys = keys // len(u)
        masks = outer_and([u[which] for u, which in zip(uniques, per_axis)], key_order)  # [G, Tq, R]
    runs = tuple(
        (s * counts[run] + i0, s * counts[run] + i1, step)
        for s in range(len(strip_tokens))
        for i0, i1, step in boxes.runs
    )
    return StripLayout(
        run, lengths[run], math.prod(lengths[a] for a in others), torch.stack(strip_tokens),
        starts[run][tile_axes[:, run]], q_index, masks, tile_group, runs,
    )  # fmt: skip
