"""``msw``: HiDiffusion's MSW-MSA (multi-scale shifted window multi-head self-attention).

Non-overlapping window attention whose window grid is cyclically shifted on every call:
  - the window defaults to ``(ceil(H/2), ceil(W/2))`` of the current grid, i.e. 2x2 windows
    (per frame on video grids: ``(1, ceil(H/2), ceil(W/2))``), resolved per call so one config
    serves every resolution and every UNet level;
  - each call draws ``k`` from {0, 1, 2, 3} and shifts every axis by ``window // 4 * k`` (integer
    division first), i.e. about {0, 1/4, 1/2, 3/4} of the window, with HiDiffusion's rounding: a
    window of 6 shifts by 0, 1, 2, 3, not 0, 1, 3, 4 as ``(k * window) // 4`` would (issue 23: the
    two differ by 5-10% of the output whenever ``window % 4`` is 2 or 3). The draw is a pure function of
    (config seed, layer name, timestep): a rerun with the same seed reproduces it whatever order
    or thread the calls arrive in, and no counter is mutated;
  - the shift is cyclic (``torch.roll``), so the last window of a shifted grid wraps around and
    holds tokens of both borders, unmasked, exactly like HiDiffusion's ``window_partition``.

How it is computed: roll the tokens on the grid by ``-shift``, run GNA's blocked mode
(stride = window) through `block_sparse_attention`, and roll the output back. The two rolls are
folded into the plan instead of moving tensors: a roll is a per-axis permutation of token
positions, so `msw_plan` is GNA's blocked plan with each axis position ``r`` of the rolled grid
renamed to the original token ``(r + shift) mod L``. The kernel's tile gathers and output
scatter then do the permutation for free (measured here: explicit rolls of q, k, v and the
output cost ~10% of the windowed attention at N = 16384). No kernel code.

Grids that the window does not divide (odd sizes), a difference by design: HiDiffusion resizes an odd
feature map bicubically up to twice its window (``2 ceil(H/2)`` x ``2 ceil(W/2)``), attends, and resizes
the output bicubically back (it warns that quality "would be largely decreased"); here no token is
resampled. The
windows are GNA's blocked windows, so on an axis of length ``L`` with window ``w`` the queries form
groups of ``w`` consecutive tokens and the last, shorter group attends the *last* ``w`` tokens (its
window is clamped inside the axis, overlapping its neighbour) instead of a smaller or padded window.
Every query therefore attends exactly ``prod(window)`` image keys. On even grids both agree exactly.

Also by design: the shift draw is seeded per (layer, timestep) instead of HiDiffusion's unseeded
``torch.rand`` per call, and any window, grid dimensionality and layer set is accepted.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from torch import Tensor

from ..kernels import AxisTiling, BlockPlan
from ..kernels.plan import PAD
from .base import AttendCall, AttentionMethod, FlopBound, axis_ints, call_generator, pairs_bound, per_axis
from .gna import GNAConfig, default_q_tile, gna_axis_tiling, gna_plan
from .naive import hidiffusion_shift, masked_attention, msw_mask
from .registry import register_method

#: HiDiffusion's shift choices as quarters of the window
SHIFT_QUARTERS = (0, 1, 2, 3)


@dataclasses.dataclass(frozen=True)
class MSWConfig:
    """MSW-MSA knobs.

    window: None (default) = 2x2 windows of the current grid, ``(ceil(H/2), ceil(W/2))``, and
        ``(1, ceil(H/2), ceil(W/2))`` per frame on video grids; or an int (every axis) or a tuple
        per axis, each >= 1, clamped to the grid where larger (that axis becomes one window).
    shift: draw a cyclic shift of {0, 1/4, 1/2, 3/4} window per call (HiDiffusion); False = never shift.
    seed: seeds the shift draws; same seed -> same shifts per (layer, timestep). Any int.
    """

    window: int | tuple[int, ...] | None = None
    shift: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window is not None:
            w = axis_ints("window", self.window)
            object.__setattr__(self, "window", w if len(w) > 1 else w[0])
        if not isinstance(self.shift, bool):
            raise TypeError(f"shift={self.shift!r} must be True or False")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed={self.seed!r} must be an int")

    @property
    def ndim(self) -> int | None:
        """Number of axes fixed by an explicit tuple window, None otherwise."""
        return len(self.window) if isinstance(self.window, tuple) else None

    def resolve_window(self, grid: tuple[int, ...]) -> tuple[int, ...]:
        """Per-axis window on ``grid``, clamped to it."""
        if self.window is None:
            halves = [math.ceil(length / 2) for length in grid]
            if len(grid) == 3:  # video: 2x2 windows inside each frame
                halves[0] = 1
            return tuple(halves)
        w = per_axis("window", axis_ints("window", self.window), len(grid))
        return tuple(min(wi, length) for wi, length in zip(w, grid))

    def shift_quarter(self, layer: str, timestep: float | None) -> int:
        """The shift ``k`` (in quarters of the window) of one call, from (seed, layer, timestep)."""
        if not self.shift:
            return 0
        gen = call_generator(self.seed, layer, timestep)
        return SHIFT_QUARTERS[int(torch.randint(len(SHIFT_QUARTERS), (1,), generator=gen))]


def msw_shift(window: tuple[int, ...], grid: tuple[int, ...], quarter: int) -> tuple[int, ...]:
    """Per-axis cyclic shift for ``quarter`` of the window, HiDiffusion's ``window // 4 * quarter``
    (rounded down to a quarter first); 0 on axes the window covers (one window: a roll would only
    permute tokens inside it)."""
    return tuple(0 if w >= length else w // 4 * quarter for w, length in zip(window, grid))


def _renamed(pos: Tensor, shift: int, length: int) -> Tensor:
    """Axis positions of the grid rolled by ``-shift`` as original positions (padding kept)."""
    return torch.where(pos == PAD, pos, (pos + shift) % length)


@functools.lru_cache(maxsize=256)
def msw_plan(grid: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...]) -> BlockPlan:
    """Blocked windows (GNA, stride = window) of the grid cyclically rolled by ``-shift``, as a plan
    over the original token order: equal to roll -> blocked plan -> roll back. Cached per shape."""
    resolved = GNAConfig(window=window, stride=window).resolve(grid)
    if not any(shift):
        return gna_plan(grid, *resolved)
    axes = []
    for length, w, st, dil, q_tile, s in zip(grid, *resolved, default_q_tile(len(grid)), shift):
        axis = gna_axis_tiling(length, w, st, dil, q_tile)
        if s:
            axis = AxisTiling(length, _renamed(axis.q_pos, s, length), _renamed(axis.kv_pos, s, length), axis.mask)
        axes.append(axis)
    return BlockPlan.from_axes(tuple(axes))


@register_method
class MSW(AttentionMethod):
    """HiDiffusion MSW-MSA: shifted non-overlapping windows over the image token grid."""

    name = "msw"
    Config = MSWConfig

    def flop_bound(self, grid: tuple[int, ...], extra_tokens: int = 0) -> FlopBound:
        """Every query attends its (shifted) window of ``prod(window)`` image keys."""
        window = math.prod(self.config.resolve_window(tuple(grid)))
        return pairs_bound(grid, extra_tokens, math.prod(grid) * (window + extra_tokens), f"N / window {window}")
    invalid_knobs = (
        ({"window": 0}, ValueError, r"window=0 must be >= 1"),
        ({"window": (4, -1)}, ValueError, r"window=\(4, -1\) must be >= 1"),
        ({"window": 2.5}, TypeError, r"window=2.5 must hold ints"),
        ({"window": (1, 2, 3, 4)}, ValueError, r"tuple of 1 to 3 ints"),
        ({"shift": "yes"}, TypeError, r"shift='yes' must be True or False"),
        ({"seed": 1.5}, TypeError, r"seed=1.5 must be an int"),
        ({"seed": True}, TypeError, r"seed=True must be an int"),
    )

    def plan(self, grid: tuple[int, ...], shift: tuple[int, ...] | None = None) -> BlockPlan:
        """The windows of ``grid`` shifted by ``shift`` per axis (None = unshifted)."""
        grid = tuple(grid)
        return msw_plan(grid, self.config.resolve_window(grid), shift or (0,) * len(grid))

    def shift(self, call: AttendCall) -> tuple[int, ...]:
        """The cyclic shift per axis of this call."""
        grid = tuple(call.grid)
        return msw_shift(self.config.resolve_window(grid), grid, self.config.shift_quarter(call.layer, call.timestep))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        out = self.plan_attention(q, k, v, self.plan(call.grid, self.shift(call)), call)
        assert isinstance(out, Tensor)
        return out

    def oracle(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        grid = tuple(call.grid)
        window = self.config.resolve_window(grid)
        shift = hidiffusion_shift(window, self.config.shift_quarter(call.layer, call.timestep))
        mask = msw_mask(grid, window, shift)
        return masked_attention(q, k, v, mask, (call.extra_k, call.extra_v, call.extra_mask), call.scale)

    @classmethod
    def dense_limit(cls, grid: tuple[int, ...]) -> MSWConfig:
        return MSWConfig(window=max(grid))  # one window covering the grid: no shift, dense
