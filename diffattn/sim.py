"""Analytical speedup bounds of a GNA configuration on a tiled attention kernel.

A fused kernel (NATTEN's FNA, our block-sparse kernels) cuts queries into *Q tiles* and keys into
*KV tiles*, and computes a (Q tile, KV tile) pair as one unit of work. Tokens are ordered
tile-major: per axis, tiles are consecutive runs of ``tile`` positions (the last one may be partial,
i.e. padded), and a multi-dimensional tile is an axis-aligned box of the grid. With dilation ``d``
an axis is first split into its ``d`` dilation groups (``x % d``), as NATTEN and `gna_axis_tiling`
do, and each group's sub-axis is tiled on its own (a query never attends another group).

A tile pair is

  - *live* if at least one of its (query, key) pairs is attended: the kernel must visit it;
  - *fully live* if every real (query, key) pair of it is attended: no element mask is needed;
  - *partial* if live but not fully live: it costs as much as a full pair, and needs a mask.

GNA masks are separable (the N-D mask is the AND of 1-D masks), so a tile pair is live iff it is
live on every axis, and fully live iff it is fully live on every axis. Everything here is counted
per axis (a few thousand tile pairs at 4K/video sizes) and multiplied, never on the N x N mask.

Bounds: the token-level bound is ``N^2 / attended pairs``; the tile-level bound is
``all tile pairs / live tile pairs`` (what a kernel that skips dead tiles and does full work on
every live tile can gain over the same kernel doing all tiles); with a measured attention share
``a`` of the step time, Amdahl's law gives the end-to-end bound ``1 / ((1 - a) + a / bound)``.
`plan_bound` gives the bound of an actual `BlockPlan`, so benchmarks share one source of truth.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from .kernels import BlockPlan
from .methods.gna import GNAConfig, IntOrTuple

DEFAULT_Q_TILE = {1: (128,), 2: (16, 8), 3: (4, 4, 8)}
DEFAULT_KV_TILE = {1: (128,), 2: (16, 8), 3: (4, 4, 8)}
"""Default tile shapes: NATTEN 0.21's Hopper FNA forward tiles for fp16/bf16 and head dim 128
(``natten/backends/configs/cutlass_hopper``: Q = KV = 128 tokens, as (128,), (16, 8), (4, 4, 8)),
the kernel the GNA paper's H100 figures were measured with."""


@dataclasses.dataclass(frozen=True)
class GPUSpec:
    """Published peak dense tensor-core throughput of a GPU, with where the figure comes from."""

    name: str
    peak_tflops: float
    source: str


GPUS = {
    "h100": GPUSpec(
        name="H100 SXM",
        peak_tflops=989.4,
        source=(
            "NVIDIA H100 Tensor Core GPU datasheet: H100 SXM dense (no 2:4 sparsity) BF16/FP16 tensor-core "
            "peak 989.4 TFLOP/s (1979 TFLOP/s is the 2:4-sparse figure)"
        ),
    ),
}


@dataclasses.dataclass(frozen=True)
class AxisSim:
    """Tile-pair counts of one axis.

    length, window, stride, dilation: the resolved (clamped) GNA parameters of this axis.
    q_tile, kv_tile: tile sizes along this axis (tokens).
    q_tiles, kv_tiles: number of tiles along this axis (summed over dilation groups).
    live, full: (Q tile, KV tile) pairs of this axis that are live / fully live.
    min_block_sparse_stride: smallest stride in [1, window] with no partial pair on this axis
        (same window, dilation and tiles), or None if there is none. An axis the window covers is
        dense whatever the stride, so it reports 1.
    """

    length: int
    window: int
    stride: int
    dilation: int
    q_tile: int
    kv_tile: int
    q_tiles: int
    kv_tiles: int
    live: int
    full: int
    min_block_sparse_stride: int | None


@dataclasses.dataclass(frozen=True)
class RooflineEstimate:
    """Roofline *estimate* of attention kernel time at a GPU's peak tensor-core throughput.

    FLOPs count the two matmuls of attention (QK^T and PV, 2 FLOPs per multiply-add each):
    ``4 * pairs * head_dim * heads * batch``, with ``pairs`` = ``N^2`` (dense),
    ``live tile pairs * Q tile tokens * KV tile tokens`` (tiled GNA, partial tiles count in full)
    or the attended (query, key) pairs (ideal). Times assume the kernel runs at 100% of the peak,
    which no kernel does (FlashAttention-3 reaches ~75% in fp16 on H100); they are lower bounds on
    time, not measurements. Softmax, memory traffic and launch overheads are ignored.
    """

    gpu: str
    peak_tflops: float
    source: str
    batch: int
    heads: int
    head_dim: int
    dense_flops: float
    tile_flops: float
    ideal_flops: float

    label = "estimate"

    def _ms(self, flops: float) -> float:
        return flops / (self.peak_tflops * 1e12) * 1e3

    @property
    def dense_ms(self) -> float:
        return self._ms(self.dense_flops)

    @property
    def tile_ms(self) -> float:
        return self._ms(self.tile_flops)

    @property
    def ideal_ms(self) -> float:
        return self._ms(self.ideal_flops)


@dataclasses.dataclass(frozen=True)
class SimResult:
    """What `simulate` found for one GNA configuration on one grid.

    grid, window, stride, dilation: the grid and the resolved (clamped) GNA parameters.
    q_tile, kv_tile: tile shapes per axis. axes: per-axis counts (`AxisSim`).
    attended_pairs: (query, key) pairs GNA attends; token_density = attended_pairs / N^2.
    tile_pairs, live_tile_pairs, full_tile_pairs: all / live / fully live (Q tile, KV tile) pairs.
    min_block_sparse_stride: smallest stride per axis (<= window) making every live pair fully
        live, or None if some axis has none. Componentwise smallest: every block-sparse stride is
        >= it on every axis.
    attention_share: measured share of step time spent in attention, if given.
    roofline: a GPU roofline estimate, if a GPU was given.
    """

    grid: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    axes: tuple[AxisSim, ...]
    attended_pairs: int
    tile_pairs: int
    live_tile_pairs: int
    full_tile_pairs: int
    min_block_sparse_stride: tuple[int, ...] | None
    attention_share: float | None = None
    roofline: RooflineEstimate | None = None

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def token_density(self) -> float:
        return self.attended_pairs / float(self.num_tokens) ** 2

    @property
    def token_bound(self) -> float:
        return 1.0 / self.token_density

    @property
    def partial_tile_pairs(self) -> int:
        return self.live_tile_pairs - self.full_tile_pairs

    @property
    def tile_density(self) -> float:
        return self.live_tile_pairs / self.tile_pairs

    @property
    def tile_bound(self) -> float:
        return 1.0 / self.tile_density

    @property
    def block_sparse(self) -> bool:
        """Every live tile pair is fully live: no element mask anywhere."""
        return self.partial_tile_pairs == 0

    @property
    def end_to_end_bound(self) -> float | None:
        """Amdahl bound of the step with the tile bound on the attention share."""
        return None if self.attention_share is None else amdahl(self.attention_share, self.tile_bound)

    @property
    def end_to_end_token_bound(self) -> float | None:
        """Amdahl bound of the step with the token bound on the attention share."""
        return None if self.attention_share is None else amdahl(self.attention_share, self.token_bound)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field and derived figure."""
        out: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("axes", "roofline")
        }
        out["axes"] = [dataclasses.asdict(a) for a in self.axes]
        for name in (
            "num_tokens",
            "token_density",
            "token_bound",
            "partial_tile_pairs",
            "tile_density",
            "tile_bound",
            "block_sparse",
            "end_to_end_bound",
            "end_to_end_token_bound",
        ):
            out[name] = getattr(self, name)
        if self.roofline is not None:
            r = self.roofline
            out["roofline_estimate"] = dict(
                dataclasses.asdict(r), label=r.label, dense_ms=r.dense_ms, tile_ms=r.tile_ms, ideal_ms=r.ideal_ms
            )
        else:
            out["roofline_estimate"] = None
        return out

    def format(self) -> str:
        """Human-readable report (several lines)."""
        x = _fmt
        lines = [
            f"GNA on grid {x(self.grid)} ({self.num_tokens} tokens): window {x(self.window)}, stride {x(self.stride)}, "
            f"dilation {x(self.dilation)} (after clamping to the grid)",
            f"tiles: Q {x(self.q_tile)} ({math.prod(self.q_tile)} tokens), KV {x(self.kv_tile)} "
            f"({math.prod(self.kv_tile)} tokens); "
            f"{math.prod(a.q_tiles for a in self.axes)} Q tiles x {math.prod(a.kv_tiles for a in self.axes)} KV tiles",
            f"token level: density {self.token_density:.4f} ({self.attended_pairs} of {self.num_tokens ** 2} pairs), "
            f"bound {self.token_bound:.2f}x",
            f"tile level:  density {self.tile_density:.4f} ({self.live_tile_pairs} live of {self.tile_pairs} "
            f"tile pairs), bound {self.tile_bound:.2f}x",
            f"live tile pairs: {self.full_tile_pairs} fully live, {self.partial_tile_pairs} partial"
            + (" (perfectly block-sparse)" if self.block_sparse else " (partial pairs need element masks)"),
            "smallest block-sparse stride: "
            + (
                "none (no stride <= window is tile-aligned on every axis)"
                if self.min_block_sparse_stride is None
                else x(self.min_block_sparse_stride)
            ),
        ]
        if self.attention_share is not None:
            lines.append(
                f"end-to-end bound at attention share {self.attention_share:.2f}: "
                f"{self.end_to_end_bound:.2f}x (tile), {self.end_to_end_token_bound:.2f}x (token)"
            )
        if self.roofline is not None:
            r = self.roofline
            lines.append(
                f"{r.gpu} roofline estimate (not a measurement; {r.peak_tflops} TFLOP/s peak, "
                f"batch {r.batch}, heads {r.heads}, head dim {r.head_dim}): dense {r.dense_ms:.3f} ms, "
                f"GNA tiles {r.tile_ms:.3f} ms, ideal {r.ideal_ms:.3f} ms (estimate)"
            )
        return "\n".join(lines)


def amdahl(share: float, speedup: float) -> float:
    """End-to-end speedup when a fraction ``share`` of the time gets ``speedup``x faster."""
    _check_share(share)
    if not speedup > 0:
        raise ValueError(f"speedup={speedup} must be > 0")
    return 1.0 / ((1.0 - share) + share / speedup)


def plan_bound(plan: BlockPlan) -> float:
    """Speedup bound of an actual `BlockPlan` over dense attention: ``1 / plan.density()``."""
    return 1.0 / plan.density()


def simulate(
    grid: tuple[int, ...],
    window: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    q_tile: IntOrTuple | None = None,
    kv_tile: IntOrTuple | None = None,
    attention_share: float | None = None,
    gpu: str | None = None,
    batch: int = 1,
    heads: int = 24,
    head_dim: int = 128,
) -> SimResult:
    """Tile-pair counts and speedup bounds of GNA ``window/stride/dilation`` on ``grid``.

    grid: token grid (1 to 3 axes: tokens / rows, columns / frames, rows, columns).
    window, stride, dilation: GNA knobs as in `GNAConfig` (an int applies to every axis); clamped
        to the grid as the method does.
    q_tile, kv_tile: tile shape per axis (default `DEFAULT_Q_TILE` / `DEFAULT_KV_TILE`).
    attention_share: measured fraction of step time spent in attention, in [0, 1].
    gpu: ``"h100"`` adds a roofline *estimate* for ``batch x heads`` heads of size ``head_dim``.
    """
    grid = _axes("grid", grid, None)
    ndim = len(grid)
    win, st, dil = GNAConfig(window, stride, dilation).resolve(grid)
    qt = _axes("q_tile", DEFAULT_Q_TILE[ndim] if q_tile is None else q_tile, ndim)
    kt = _axes("kv_tile", DEFAULT_KV_TILE[ndim] if kv_tile is None else kv_tile, ndim)
    if attention_share is not None:
        _check_share(attention_share)
    for name, value in (("batch", batch), ("heads", heads), ("head_dim", head_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an int >= 1")
    if gpu is not None and gpu not in GPUS:
        raise ValueError(f"gpu={gpu!r} is not known; accepted: {', '.join(GPUS)}")

    axes = []
    for length, k, s, d, tq, tk in zip(grid, win, st, dil, qt, kt):
        q_tiles, kv_tiles, live, full = _axis_counts(length, k, s, d, tq, tk)
        axes.append(AxisSim(length, k, s, d, tq, tk, q_tiles, kv_tiles, live, full, _min_stride(length, k, d, tq, tk)))
    mins = [a.min_block_sparse_stride for a in axes]
    attended = math.prod(length * k for length, k in zip(grid, win))
    live = math.prod(a.live for a in axes)
    roofline = None
    if gpu is not None:
        spec = GPUS[gpu]
        per_pair = 4.0 * head_dim * heads * batch
        roofline = RooflineEstimate(
            gpu=spec.name,
            peak_tflops=spec.peak_tflops,
            source=spec.source,
            batch=batch,
            heads=heads,
            head_dim=head_dim,
            dense_flops=per_pair * float(math.prod(grid)) ** 2,
            tile_flops=per_pair * live * math.prod(qt) * math.prod(kt),
            ideal_flops=per_pair * attended,
        )
    return SimResult(
        grid=grid,
        window=win,
        stride=st,
        dilation=dil,
        q_tile=qt,
        kv_tile=kt,
        axes=tuple(axes),
        attended_pairs=attended,
        tile_pairs=math.prod(a.q_tiles * a.kv_tiles for a in axes),
        live_tile_pairs=live,
        full_tile_pairs=math.prod(a.full for a in axes),
        min_block_sparse_stride=None if None in mins else tuple(mins),  # type: ignore[arg-type]
        attention_share=attention_share,
        roofline=roofline,
    )


#: query tiles of one dilation group counted one by one (vectorised) up to this many; past it, by periods (below)
DIRECT_TILES = 1 << 14
#: most query tiles ever evaluated for one axis (a period longer than this is refused, never approximated)
MAX_EVALUATED_TILES = 1 << 25
#: largest window per axis whose smallest block-sparse stride is searched (every stride in [1, window] is a candidate)
MAX_SEARCH_WINDOW = 1_000_000


def _starts(pos: Tensor, n: int, k: int, s: Tensor | int) -> Tensor:
    """Window start of group positions ``pos`` (GNA's rule, as `gna_axis_window_starts`), without per-token arrays."""
    leader = torch.clamp((pos // s) * s + s // 2, max=n - 1)
    return torch.clamp(leader - k // 2, min=0, max=n - k)


def _tile_terms(i: Tensor, n: int, k: int, s: Tensor | int, tq: int, tk: int) -> tuple[Tensor, Tensor]:
    """Live and fully live KV tiles of query tiles ``i`` of one dilation group of length ``n``.

    A query tile ``[a, b)`` sees keys ``[lo, hi + k)`` with ``lo = start(a)``, ``hi = start(b - 1)``: KV tile ``m``
    is live iff ``m * tk < hi + k`` and ``(m + 1) * tk > lo``, fully live iff ``m * tk >= hi`` and its end
    ``min((m + 1) * tk, n) <= lo + k``; both are intervals of ``m``, counted in closed form.
    """
    a = i * tq
    b = torch.clamp(a + tq, max=n)
    lo, hi = _starts(a, n, k, s), _starts(b - 1, n, k, s)
    kv_tiles = -(-n // tk)
    live = (hi + k - 1) // tk - lo // tk + 1
    first = -(-hi // tk)
    last = torch.clamp((lo + k) // tk - 1, max=kv_tiles - 1)
    full = torch.clamp(last - first + 1, min=0)
    if n % tk:  # the last KV tile is partial: fully live iff the window reaches the end of the axis
        full = full + ((lo + k == n) & ((kv_tiles - 1) * tk >= hi)).long()
    return live, full


def _explicit(p: int, q: int, n: int, k: int, s: int, tq: int, tk: int) -> tuple[int, int]:
    live = full = 0
    for c in range(p, q, 1 << 20):  # chunks keep the index arrays small
        lv, fl = _tile_terms(torch.arange(c, min(q, c + (1 << 20)), dtype=torch.long), n, k, s, tq, tk)
        live, full = live + int(lv.sum()), full + int(fl.sum())
    return live, full


def _periodic(p: int, q: int, period: int, n: int, k: int, s: int, tq: int, tk: int) -> tuple[int, int]:
    """Sum over query tiles ``[p, q)`` whose terms repeat every ``period`` tiles."""
    count = q - p
    if count <= 0:
        return 0, 0
    if count <= 2 * period:
        return _explicit(p, q, n, k, s, tq, tk)
    if period > MAX_EVALUATED_TILES:
        raise ValueError(
            f"an axis of {n} tokens with stride {s} and tiles {tq}/{tk} repeats only every {period} query tiles, more "
            f"than the {MAX_EVALUATED_TILES} this counts exactly: use tiles or a stride that share factors"
        )
    reps, rem = divmod(count, period)
    one = _explicit(p, p + period, n, k, s, tq, tk)
    tail = _explicit(p, p + rem, n, k, s, tq, tk)
    return reps * one[0] + tail[0], reps * one[1] + tail[1]


def _group_counts(n: int, k: int, s: int, tq: int, tk: int, direct: int = DIRECT_TILES) -> tuple[int, int]:
    """``(live, fully live)`` tile pairs of one dilation group of length ``n`` in closed form.

    Window starts are 0 for the groups ``j < jA`` (left border), ``j * s + s // 2 - k // 2`` for ``jA <= j <= jB``
    (interior) and ``n - k`` past it (right border). Query tiles inside a border all see the same keys; inside the
    interior, shifting a tile by ``lcm(tq, s, tk)`` tokens shifts its keys by whole KV tiles, so the counts repeat
    every ``lcm(tq, s, tk) / tq`` tiles. Only the few tiles that straddle a border are counted one by one.
    """
    q_tiles = -(-n // tq)
    if q_tiles <= direct:
        return _explicit(0, q_tiles, n, k, s, tq, tk)
    groups = -(-n // s)
    j_a = max(0, (k // 2 - s // 2) // s + 1)  # first group whose start is past 0
    j_b = min((n - k - s // 2 + k // 2 - 1) // s, (n - 1 - s // 2) // s, groups - 1)  # last before n - k
    left_end = min(j_a * s, n)
    right_start = min(max(j_a, j_b + 1) * s, n)
    interior = (j_a * s, min((j_b + 1) * s, n)) if j_b >= j_a else (left_end, left_end)
    last = q_tiles - 1  # the last tile (maybe partial) is always counted on its own
    b1 = min(left_end // tq, last)
    b2 = max(b1, min(-(-interior[0] // tq), last))
    b3 = max(b2, min(interior[1] // tq, last))
    b4 = max(b3, min(-(-right_start // tq), last))
    period = math.lcm(tq, s, tk) // tq
    parts = [
        _periodic(0, b1, 1, n, k, s, tq, tk),
        _explicit(b1, b2, n, k, s, tq, tk),
        _periodic(b2, b3, period, n, k, s, tq, tk),
        _explicit(b3, b4, n, k, s, tq, tk),
        _periodic(b4, last, 1, n, k, s, tq, tk),
        _explicit(last, q_tiles, n, k, s, tq, tk),
    ]
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def _group_lengths(length: int, dilation: int) -> list[tuple[int, int]]:
    """``(group length, how many groups)``: a dilated axis splits into groups of two lengths at most."""
    short, extra = divmod(length, dilation)
    return [(n, c) for n, c in ((short + 1, extra), (short, dilation - extra)) if c and n]


def _axis_counts(length: int, window: int, stride: int, dilation: int, q_tile: int, kv_tile: int) -> tuple[int, ...]:
    """``(q_tiles, kv_tiles, live pairs, fully live pairs)`` of one axis, in closed form (`_group_counts`): no array
    grows with the axis, so a grid of 10^12 tokens per axis costs what a small one does."""
    q_tiles = kv_tiles = live = full = 0
    for n, count in _group_lengths(length, dilation):
        lv, fl = _group_counts(n, window, stride, q_tile, kv_tile)
        q_tiles += count * -(-n // q_tile)
        kv_tiles += count * -(-n // kv_tile)
        live, full = live + count * lv, full + count * fl
    return q_tiles, kv_tiles, live, full


def _surely_partial(n: int, k: int, strides: Tensor, tq: int, tk: int) -> Tensor:
    """Strides (a vector) that certainly leave a partial tile pair in a group of length ``n``: the first or last
    query tile is partial, or the windows move at two consecutive stride groups, which must then both begin on a
    query tile (else a tile would hold two different windows), so the stride must be a multiple of ``tq``."""
    s = strides
    q_tiles = -(-n // tq)
    bad = torch.zeros_like(s, dtype=torch.bool)
    for i in (0, q_tiles - 1):
        live, full = _tile_terms(torch.full_like(s, i), n, k, s, tq, tk)
        bad |= live != full
    groups = -(-n // s)
    j_a = torch.clamp((k // 2 - s // 2).div(s, rounding_mode="floor") + 1, min=0)
    j_b = torch.minimum(torch.minimum((n - k - s // 2 + k // 2 - 1) // s, (n - 1 - s // 2) // s), groups - 1)
    moves = torch.minimum(j_b + 1, groups - 1) - torch.clamp(j_a, min=1) >= 1
    return bad | (moves & (s % tq != 0))


def _min_stride(length: int, window: int, dilation: int, q_tile: int, kv_tile: int) -> int | None:
    """Smallest stride in [1, window] with no partial tile pair on this axis, or None. Every stride is a candidate;
    `_surely_partial` drops most at once and the rest are counted exactly."""
    if window == length:  # a dense axis: every live pair is fully live whatever the stride
        return 1
    if window > MAX_SEARCH_WINDOW:
        raise ValueError(
            f"window {window} on an axis of {length}: the smallest block-sparse stride is searched for windows up to "
            f"{MAX_SEARCH_WINDOW} tokens per axis (or a window covering the axis)"
        )
    strides = torch.arange(1, window + 1, dtype=torch.long)
    keep = torch.ones_like(strides, dtype=torch.bool)
    for n, _ in _group_lengths(length, dilation):
        keep &= ~_surely_partial(n, window, strides, q_tile, kv_tile)
    for s in strides[keep].tolist():
        counts = [_group_counts(n, window, s, q_tile, kv_tile) for n, _ in _group_lengths(length, dilation)]
        if all(live == full for live, full in counts):
            return s
    return None


def _axes(name: str, value: object, ndim: int | None) -> tuple[int, ...]:
    """Validate a per-axis int (or tuple) and broadcast it to ``ndim`` axes."""
    values = tuple(value) if isinstance(value, tuple | list) else (value,)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise TypeError(f"{name}={value!r} must be an int or a tuple of 1 to 3 ints")
    if not 1 <= len(values) <= 3:
        raise ValueError(f"{name}={value!r} must have 1 to 3 axes, got {len(values)}")
    if any(v < 1 for v in values):
        raise ValueError(f"{name}={value!r} must be >= 1 on every axis")
    if ndim is None:
        return values
    if len(values) == 1:
        return values * ndim
    if len(values) != ndim:
        raise ValueError(
            f"{name}={value!r} has {len(values)} axes but the grid has {ndim}; give an int or a {ndim}-tuple"
        )
    return values


def _check_share(share: float) -> None:
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 <= share <= 1.0:
        raise ValueError(f"attention_share={share!r} must be a number in [0, 1]")


def _fmt(t: tuple[int, ...]) -> str:
    return "x".join(map(str, t))


__all__ = [
    "DEFAULT_KV_TILE",
    "DEFAULT_Q_TILE",
    "GPUS",
    "AxisSim",
    "GPUSpec",
    "RooflineEstimate",
    "SimResult",
    "amdahl",
    "plan_bound",
    "simulate",
]
