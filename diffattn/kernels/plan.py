"""`BlockPlan`: a sparse attention pattern as data, the only thing kernels see.

A plan cuts the query tokens of a grid into tiles. Every query of tile ``t`` attends to the
same gathered key list ``kv_index[t]``, restricted by an element mask only where the tile is
*partial*. Token indices are positions in the flattened grid (frames, rows, columns order).

Plans are built from *separable* per-axis tilings (`AxisTiling`): a multi-dimensional tile is
the Cartesian product of one 1-D tile per axis, and its mask is the outer AND of the per-axis
masks. Every pattern we ship (neighborhood, strided, blocked, dilated, windowed) is separable,
which keeps masks tiny (``[tiles, q_len, kv_len]`` per axis instead of per token pair).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

PAD = -1  # per-axis padding position inside an AxisTiling


def check_bool_mask(name: str, mask: Tensor | None) -> None:
    """Refuse a mask that is not bool: a float SDPA-style mask (0 = attend, -inf = drop) read as a bool
    one would be inverted, silently."""
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a bool mask (True = attend), got dtype {mask.dtype}; an additive float mask "
            "(0 / -inf, as SDPA takes) is not accepted here: pass `mask == 0` for one"
        )


@dataclass(frozen=True, eq=False)
class AxisTiling:
    """1-D tiling of one grid axis.

    q_pos:  [n, q_len] int64, query positions of each axis tile (PAD for padding).
    kv_pos: [n, kv_len] int64, key positions each axis tile attends to (PAD for padding).
    mask:   [n, q_len, kv_len] bool, or None when every tile is full (no padding, all live).
            Padded keys are False; padded query rows copy a real row so softmax never sees an
            all-masked row.
    """

    length: int
    q_pos: Tensor
    kv_pos: Tensor
    mask: Tensor | None

    @functools.cached_property
    def mask_id(self) -> Tensor:
        """``[n]`` int64: tiles with equal masks share an id (id 0 = an all-live mask if any)."""
        if self.mask is None:
            return torch.zeros(self.num_tiles, dtype=torch.long)
        flat = self.mask.reshape(self.num_tiles, -1)
        # prepend an all-live row so that "full" always gets id 0
        _, inverse = torch.unique(torch.cat([torch.ones_like(flat[:1]), flat]), dim=0, return_inverse=True)
        ids = inverse[1:]
        return torch.where(ids == inverse[0], 0, ids + 1)

    @staticmethod
    def from_lists(length: int, tiles: list[tuple[list[int], list[int], Tensor | None]]) -> AxisTiling:
        """Build from ``[(q_positions, kv_positions, bool mask [q, kv] or None = all live), ...]``."""
        q_len = max(len(q) for q, _, _ in tiles)
        kv_len = max(len(kv) for _, kv, _ in tiles)
        n = len(tiles)
        q_pos = torch.full((n, q_len), PAD, dtype=torch.long)
        kv_pos = torch.full((n, kv_len), PAD, dtype=torch.long)
        mask = torch.zeros((n, q_len, kv_len), dtype=torch.bool)
        ragged_or_partial = False
        for i, (q, kv, rows) in enumerate(tiles):
            q_pos[i, : len(q)] = torch.tensor(q, dtype=torch.long)
            kv_pos[i, : len(kv)] = torch.tensor(kv, dtype=torch.long)
            if rows is None:
                mask[i, : len(q), : len(kv)] = True
            else:
                mask[i, : len(q), : len(kv)] = rows
                ragged_or_partial = True
            mask[i, len(q) :] = mask[i, 0]
            ragged_or_partial |= len(q) != q_len or len(kv) != kv_len
        return AxisTiling(length, q_pos, kv_pos, mask if ragged_or_partial else None)

    @property
    def num_tiles(self) -> int:
        return self.q_pos.shape[0]


@dataclass(frozen=True, eq=False)
class BlockPlan:
    """Query tiles and the keys each attends to, over a grid of ``prod(grid)`` tokens.

    q_index:  [T, Tq] int64 flattened query token of each tile slot; ``num_tokens`` = padding.
    kv_index: [T, R]  int64 flattened key token of each tile slot; ``num_tokens`` = padding.
    axes:     the per-axis tilings the plan is the product of (masks live there).
    tile_axes:[T, ndim] int64, which axis tile each tile is made of.
    groups:   ``((start, end, full), ...)``: tiles are ordered so that each range shares one
              element mask (``full`` = no mask at all); kernels build one mask per group.
    gna:      per-axis ``(window, stride, dilation)`` when the plan is exactly GNA on ``grid``
              (NATTEN rule, see methods/gna.py), else None. Kernels that can evaluate that rule
              (triton) compute partial-tile masks from it instead of loading ``axes[*].mask``.
    kv_block: per-axis block shape such that every tile's keys are whole, aligned blocks and every
              tile is full (tile-aligned strides), else None. Ordering tokens block-major then makes
              each tile's keys contiguous runs of ``prod(kv_block)`` tokens (see `key_blocks`).
    """

    grid: tuple[int, ...]
    axes: tuple[AxisTiling, ...]
    q_index: Tensor
    kv_index: Tensor
    tile_axes: Tensor
    groups: tuple[tuple[int, int, bool], ...]
    gna: tuple[tuple[int, int, int], ...] | None = None
    kv_block: tuple[int, ...] | None = None

    @staticmethod
    def from_axes(axes: tuple[AxisTiling, ...], gna: tuple[tuple[int, int, int], ...] | None = None) -> BlockPlan:
        if gna is not None and len(gna) != len(axes):
            raise ValueError(f"gna={gna} needs one (window, stride, dilation) per axis ({len(axes)} axes)")
        grid = tuple(a.length for a in axes)
        counts = [a.num_tiles for a in axes]
        tile_axes = torch.cartesian_prod(*[torch.arange(c) for c in counts]).reshape(-1, len(axes))
        # group id = the tuple of per-axis mask ids; id 0 on every axis = a full tile
        gid = torch.zeros(tile_axes.shape[0], dtype=torch.long)
        for a, axis in enumerate(axes):
            ids = axis.mask_id
            gid = gid * (int(ids.max()) + 1) + ids[tile_axes[:, a]]
        gid, order = torch.sort(gid, stable=True)
        tile_axes = tile_axes[order]
        values, sizes = torch.unique_consecutive(gid, return_counts=True)
        ends = torch.cumsum(sizes, 0).tolist()
        starts = [0] + ends[:-1]
        groups = tuple((s, e, int(v) == 0) for s, e, v in zip(starts, ends, values.tolist()))
        q_index = product_index([a.q_pos for a in axes], tile_axes, grid)
        kv_index = product_index([a.kv_pos for a in axes], tile_axes, grid)
        return BlockPlan(grid, axes, q_index, kv_index, tile_axes, groups, gna, key_blocks(axes))

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def num_tiles(self) -> int:
        return self.q_index.shape[0]

    @property
    def has_mask(self) -> bool:
        return any(a.mask is not None for a in self.axes)

    @functools.cached_property
    def gather_index(self) -> tuple[Tensor, Tensor]:
        """``(q, kv)`` indices with padding pointing at token ``N - 1`` instead of ``N``: safe to
        gather from the unpadded tensors (padded keys are masked, padded query rows dropped)."""
        n = self.num_tokens
        return self.q_index.clamp(max=n - 1), self.kv_index.clamp(max=n - 1)

    def tile_mask(self, tiles: slice | Tensor | None = None) -> Tensor | None:
        """Element mask ``[t, Tq, R]`` (bool) of the selected tiles, or None if all are full."""
        if not self.has_mask:
            return None
        sel = self.tile_axes if tiles is None else self.tile_axes[tiles]
        per_axis = []
        for a, axis in enumerate(self.axes):
            qa, ra = axis.q_pos.shape[1], axis.kv_pos.shape[1]
            full = torch.ones((1, qa, ra), dtype=torch.bool).expand(sel.shape[0], qa, ra)
            per_axis.append(full if axis.mask is None else axis.mask[sel[:, a]])
        return outer_and(per_axis)

    def dense_mask(self) -> Tensor:
        """``[N, N]`` bool mask of (query, key) pairs the plan attends. For tests and small grids."""
        n = self.num_tokens
        mask = torch.zeros((n + 1, n + 1), dtype=torch.bool)
        tm = self.tile_mask()
        for t in range(self.num_tiles):
            rows, cols = self.q_index[t], self.kv_index[t]
            block = torch.ones((len(rows), len(cols)), dtype=torch.bool) if tm is None else tm[t]
            mask[rows[:, None], cols[None, :]] |= block
        return mask[:n, :n]

    def computed_pairs(self) -> int:
        """(query, key) pairs the kernel computes: real queries times the tile's gathered keys."""
        real_q = (self.q_index < self.num_tokens).sum(1)
        return int((real_q * self.kv_index.shape[1]).sum())

    def density(self) -> float:
        """Work of the plan relative to dense attention (partial tiles count as full work)."""
        return self.computed_pairs() / float(self.num_tokens) ** 2


def outer_and(masks: list[Tensor], key_order: list[int] | None = None) -> Tensor:
    """``[t, Q, R]`` bool: per tile, the AND of per-axis masks ``[t, q_a, r_a]`` over the product of the axes, query
    slots in axis order (axis 0 outermost) and key slots in ``key_order`` (default: axis order)."""
    nd = len(masks)
    key_order = list(range(nd)) if key_order is None else key_order
    out: Tensor | None = None
    for a, m in enumerate(masks):
        # this axis' q dim at position 1 + a and its kv dim at 1 + nd + (its place in key_order)
        shape = [m.shape[0]] + [1] * (2 * nd)
        shape[1 + a], shape[1 + nd + key_order.index(a)] = m.shape[1:]
        out = m.reshape(shape) if out is None else out & m.reshape(shape)
    assert out is not None
    return out.reshape(out.shape[0], math.prod(m.shape[1] for m in masks), math.prod(m.shape[2] for m in masks))


def key_blocks(axes: tuple[AxisTiling, ...]) -> tuple[int, ...] | None:
    """Per axis, the largest ``b`` such that the axis length and every axis tile's key range are
    multiples of ``b`` and aligned to it, i.e. every tile's keys are whole blocks of ``b`` positions;
    None when some axis has a partial or ragged tile or non-consecutive keys (dilation)."""
    out = []
    for axis in axes:
        if not bool((axis.mask_id == 0).all()):
            return None
        pos = axis.kv_pos
        if bool((pos < 0).any()) or not bool((pos[:, 1:] - pos[:, :-1] == 1).all()):
            return None
        out.append(math.gcd(axis.length, pos.shape[1], *pos[:, 0].tolist()))
    return tuple(out)


def product_index(per_axis: list[Tensor], tile_axes: Tensor, grid: tuple[int, ...]) -> Tensor:
    """Flattened token index of the Cartesian product of per-axis positions, PAD -> N."""
    n = math.prod(grid)
    idx = torch.zeros((tile_axes.shape[0], 1), dtype=torch.long)
    valid = torch.ones((tile_axes.shape[0], 1), dtype=torch.bool)
    for a, pos in enumerate(per_axis):
        p = pos[tile_axes[:, a]]  # [T, len_a]
        idx = (idx[..., None] * grid[a] + p.clamp_min(0)[:, None]).flatten(1)
        valid = (valid[..., None] & (p >= 0)[:, None]).flatten(1)
    return torch.where(valid, idx, torch.full_like(idx, n))
