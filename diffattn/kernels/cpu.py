"""Fast CPU block-sparse attention: per plan, tiles of gathered keys, each query's own keys read in place, or one
masked SDPA call, on the caller's OpenMP threads or on worker threads that each use one intra-op thread.

Four exact paths: tiled or masked-sdpa chosen once per plan by `CpuCostModel` (`prepare`); per call
(`prepare_call`), a tiled plan run as strips where a call's keys are large, and any plan whose keys are runs
of consecutive tokens run direct where that is modelled cheaper at the call's head dim:
  - **tiled**: each chunk of tiles gathers its query and key rows (``index_select`` of ``[B, S, H*D]`` rows:
    as fast as from a token-major copy, and 5x faster than gathering a ``[S, B, H, D]`` view: 1.3 vs 7.9 ms
    for a 64x64 grid's keys, measured), runs *one* CPU flash call with batch = (batch item, tile) and the
    tiles' element masks broadcast over the heads, and scatters its output rows back into contiguous
    ``[B, S, H, D]``. Fully-live plans (GNA with tile-aligned strides) run with no mask.
  - **strips** (`diffattn.kernels.strips`): the tiles again, but each strip of the grid (one axis whole, the
    others cut to one tile's key range) is gathered once and its tiles read their key boxes from it as
    overlapping strided views, one flash call per run of tiles and batch item. Chosen per call for a tiled
    plan whose keys no longer fit the cache (`_strips_pay`): at 128x128 tokens, window 32, 8 heads of 64, the
    tiles gather 1.6 GB of K/V per call, the strips 0.5 GB; measured 1.11x faster than tiled in fp32 and
    1.15x in bf16 in 4 MB pieces (7 interleaved rounds), 1.25x in `STRIP_PIECE_BYTES` pieces (bench_engine),
    1.05-1.08x for 128x128 and 256x256 grids at window 8 (B 2, 4 heads of 32), and no faster at 32x32 or
    64x64 (0.85x: one call per run and batch item costs more than the gathers it saves when the keys are in
    cache).
  - **masked-sdpa**: one flash call over the whole sequence with the plan's ``[N, N]`` additive mask:
    no gathers, but N^2 work, so only for small grids (the model compares both costs), and with no mask
    at all (``dense-sdpa``) for a plan of every query over every key (a window covering the grid).
  - **direct** (`diffattn.kernels.cpu_direct`): a compiled kernel computes exactly each query's (query, key)
    pairs, no tile around them: at 32x32 tokens and window 8 (B 12, 4 heads of 32, fp32, 2 threads) 11.8 ms
    against 26.2 ms tiled and 48.9 ms dense SDPA; it loses where windows are wide and heads large (128x128
    window 32, 8 heads of 64: 902 ms against 556 ms as strips), where the flash op's matrix products pay.
    fp32 inference only; built at first use, and left out (with a warning) where it cannot be built.
None materializes more than a chunk of gathered tiles (strips: of strip rows) or, for masked-sdpa, one
``N x N`` mask (at most `MASKED_SDPA_MAX_TOKENS` tokens); all return the same result to fp tolerance.

Why worker threads (measured on this 2-core machine, 64x64 tokens, B 2, 4 heads, d 32, window 8x8):
the CPU flash op splits its work statically over its OpenMP threads, so when other processes keep the
cores busy, every op of a few milliseconds waits for whichever of its threads was descheduled. With two
spinning processes beside it, the old engine (many small ops) fell from 4.6x dense to 1.3x, and even one
large flash call on 2 OpenMP threads kept only 2.0x, while the same work as 8-16 chunks taken
dynamically by 2 workers (one intra-op thread each) kept 9-13x: a descheduled worker simply takes fewer
chunks. The calling thread takes chunks too, beside ``torch.get_num_threads() - 1`` workers (1 = run
inline). On a quiet machine, though, the caller's own OpenMP threads win on calls of up to ~0.1 s (8.9x
vs 6.8x dense at 64x64): `Scheduler` runs those calls inline, and on the workers while it measures the
caller being descheduled.
Results do not depend on the chunking, the thread count or the scheduler's choice (each (tile, head) is
one independent flash problem), which the tests check bit for bit.

Each thread gathers into its own reused workspace (a few chunks' bytes, kept between calls): fresh
multi-MB gathers per chunk were page-faulted in again and again (`_gather`). What a tiled call's chunks read
besides q, k and v (their index slices and masks) is built once per (plan, batch, tokens, chunks) (`CHUNKS`).

Non-finite inputs: a NaN or Inf in q, k or v is never removed. Every query whose keys include it gets a
NaN output; so may the other queries of the same tile (on the strips path, of every tile whose key box
holds it: the flash op adds the mask to the score, and NaN + -inf is NaN), as may every query of the same
masked-sdpa call.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from . import cpu_direct
from .paths import note_path
from .plan import AxisTiling, BlockPlan, check_bool_mask
from .strips import StripLayout, strip_key_slots, strip_layout

_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

# Bound on the gathered bytes of one chunk of tiles. Small on purpose: glibc serves blocks below its
# mmap threshold (<= 32 MB) from reused heap memory, while bigger temporaries are fresh mmaps whose
# page faults cost more than the gather itself (measured: 0.34 s vs 0.09 s for 512 MB; 27 vs 4 ms for the
# 47 MB of a 64x64 grid's tiles), and a chunk that stays in cache is reused by the flash op right after
# (32x32 grid on the caller's threads, measured: 2.10x dense in 4 MB chunks, 0.83x as one 13 MB chunk).
CHUNK_BYTES = 4 * 2**20
#: The strips path's bound on the gathered bytes of one piece of a run. Larger than `CHUNK_BYTES` because a cut
#: costs a second gather of the rows two pieces' boxes share (a piece of ``t`` tiles ``step`` rows apart reads
#: ``(t - 1) * step + box_rows`` rows): speedup.py's 128x128 window 32 ran 1.08-1.11x faster in pieces of up
#: to 32 MB than of 4 MB (whole runs of 20 MB; 5 interleaved rounds), and its gathers reuse per-thread buffers.
STRIP_PIECE_BYTES = 32 * 2**20
#: The masked-sdpa path materializes an ``N x N`` mask: never above this many tokens (16 MB in fp32).
MASKED_SDPA_MAX_TOKENS = 2048
#: A tiled call runs as strips (`_strips_pay`) from this many bytes of one batch item's keys ...
STRIPS_MIN_BYTES = 16 * 2**20
#: ... when the strips gather at most this share of the tiles' key slots.
STRIPS_MAX_SHARE = 0.5
#: Below 192 queries the CPU flash op works in query blocks of 32, and a smaller block runs at a worse rate
#: (measured 1.5x the time per pair at 16 queries, head dim 64): the strips' cost counts a smaller tile as 32.
FLASH_Q_BLOCK = 32
#: Modelled single-thread seconds below which a chunk is not worth a hand-off to a worker (a hand-off
#: plus the chunk's 6 op dispatches cost ~0.1 ms). Only small calls reach it: a 32x32 grid's contended call
#: (B 2, 4 heads of 32, window 8) runs 8 chunks at 0.75 ms rather than 12 at 0.5 ms, and ran 3-19% faster
#: so beside two spinning processes in each of five runs of 60-250 shuffled rounds (6 chunks: alike, 24-48:
#: slower); from 64x64 on, the per-thread cap decides.
MIN_CHUNK_S = 0.75e-3
#: Chunks per worker at most: enough for a descheduled worker to be covered by the others.
CHUNKS_PER_WORKER = 8
#: Modelled single-thread seconds of a call up to which it runs on the caller's own OpenMP threads while the
#: machine is quiet (see `Scheduler`).
INLINE_MAX_S = 0.1
#: Modelled single-thread seconds of a tiled or direct call up to which it runs, while contended, in one OpenMP
#: region on the caller's team (tiled: as one chunk whose flash op runs there; see `Scheduler`). Busy, B 2, 4
#: heads of 32, window 8, tiled: a 32x32 grid (6.5 ms modelled) took 9.3-10.5 ms so against 12.5-14.0 ms on the
#: workers, but a 64x64 blocked one (9.5 ms) 20.2 ms against 14.7-16.6 ms; larger calls keep the workers, which
#: kept 0.85-1.3 of their quiet speedup.
TEAM_MAX_S = 8e-3


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool mask (True = attend) as the additive 0 / -inf bias the CPU flash op wants, in ``dtype``."""
    check_bool_mask("mask", mask)
    return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, float("-inf"))


def sdpa_with_lse(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """One CPU flash call that also returns the log-sum-exp (on the calling thread's intra-op threads).

    Args: q ``[N, H, Lq, D]``, k/v ``[N, H, Lk, D]``, attn_mask additive in q's dtype,
    broadcastable to ``[N, H, Lq, Lk]``.
    Returns: ``(out [N, H, Lq, D], lse [N, H, Lq] fp32)``. A query whose every key is masked gets
    out 0 and lse **0** from the op (not -inf): callers that can mask a whole row fix the lse.
    """
    # the CPU flash op silently returns garbage when D is not the innermost (stride-1) dimension
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return _flash_cpu(q, k, v, attn_mask=attn_mask, scale=scale)


# --- the cost model -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CpuCostModel:
    """Modelled single-thread seconds per (batch x head) of the two paths.

    Tiled: ``tiles * (tile_s + q_len * kv_len * pair_s + kv_len * key_s + q_len * query_s) + tokens * token_s``,
    where a key slot costs its gather and the flash op's packing, a query slot its gather, softmax
    normalisation and scatter, and a token the token-major layout. Masked sdpa: ``tokens^2 * pair_s + tile_s``.
    Fitted by least squares (relative error) to the thread CPU time of the whole tiled path on 2-D grids of
    16-128 per side, windows 3-16, strides 1 and 4 and every power-of-two tile (B 2, 4 heads, d 32, fp32,
    one thread): median error 7.5%; the tile it picks ran within 1% of the fastest measured tile on 12 of
    the 13 configurations (20% on the 13th, a 16x16 grid). Only ratios matter (they choose tiles and
    paths), and they barely move with the head dim, so one choice per plan serves every head dim.
    ``scripts/bench_engine.py --calibrate`` refits it (another machine, another torch).
    """

    pair_s: float = 2.34e-9
    key_s: float = 62e-9
    query_s: float = 41e-9
    tile_s: float = 0.30e-6
    token_s: float = 32e-9
    direct_query_s: float = 240e-9
    direct_chunk_s: float = 12.4e-9
    direct_key_s: float = 2.7e-9

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{f.name}={value!r} must be a finite float >= 0")

    def tiled(self, tiles: int, q_len: int, kv_len: int, num_tokens: int) -> float:
        """The tiled path over ``tiles`` tiles of ``q_len`` query slots and ``kv_len`` key slots."""
        per_tile = self.tile_s + q_len * kv_len * self.pair_s + kv_len * self.key_s + q_len * self.query_s
        return tiles * per_tile + num_tokens * self.token_s

    def strips(self, tiles: int, q_len: int, kv_len: int, strip_slots: int, num_tokens: int) -> float:
        """The strips path: the tiles' flash work with ``strip_slots`` gathered key slots in place of the tiles'
        own, a tile of fewer than `FLASH_Q_BLOCK` query slots costing as one of that many."""
        flash = max(q_len, FLASH_Q_BLOCK) * kv_len * self.pair_s
        per_tile = self.tile_s + flash + q_len * self.query_s
        return tiles * per_tile + strip_slots * self.key_s + num_tokens * self.token_s

    def direct(self, num_tokens: int, chunks: int, keys: int, head_dim: int = 32) -> float:
        """The direct path (`diffattn.kernels.cpu_direct`): per query a fixed cost, ``chunks`` 16-lane score
        vectors and ``keys`` (query, key) pairs, these two in proportion to the head dim. Fitted (relative error;
        up to 22%, median 8%) to its single-thread time with the key transposition, B 2, 4 heads of 32, fp32, on
        2-D grids of 32-128 per side and windows 3-24. Unlike the flash op's, its cost grows with the head dim
        (no matrix product to amortise it): 128x128 tokens, window 32, 8 heads of 64 ran in 902 ms direct
        against 556 ms as strips, so the path choice (`prepare_call`) asks with the call's head dim."""
        per_dim = (chunks * self.direct_chunk_s + keys * self.direct_key_s) * head_dim / 32
        return num_tokens * (self.direct_query_s + per_dim)

    def masked_sdpa(self, num_tokens: int) -> float:
        """One masked flash call over all ``num_tokens`` queries and keys."""
        return num_tokens * num_tokens * self.pair_s + self.tile_s

    def dense(self, q_len: int, kv_len: int) -> float:
        """One flash call of ``q_len`` queries over ``kv_len`` keys (no gathers)."""
        return q_len * kv_len * self.pair_s + self.tile_s


COST = CpuCostModel()


def tiling_cost(axes: Sequence[AxisTiling], item_bytes: int = 0) -> float:
    """Modelled cost of a plan of query tiles ``axes`` (one `AxisTiling` per axis), run by calls whose keys
    hold ``item_bytes`` per batch item: as strips where a call would run them (`_strips_pay`), else tiled.
    What methods minimise when they choose a query tile."""
    tiles, n = math.prod(a.num_tiles for a in axes), math.prod(a.length for a in axes)
    q_len, kv_len = math.prod(a.q_pos.shape[1] for a in axes), math.prod(a.kv_pos.shape[1] for a in axes)
    slots = strip_key_slots(axes) if item_bytes >= STRIPS_MIN_BYTES else None
    if slots is not None and _strips_pay(slots / (tiles * kv_len), item_bytes):
        return COST.strips(tiles, q_len, kv_len, slots, n)
    return COST.tiled(tiles, q_len, kv_len, n)


# --- prepared plans -----------------------------------------------------------------------------------------

PATHS = ("tiled", "strips", "masked-sdpa", "direct")


@dataclasses.dataclass(frozen=True, eq=False)
class CpuPlan:
    """What the CPU kernel needs of one `BlockPlan` in one dtype, built once (`prepare`).

    path: one of `PATHS`; label: what ``handle.summary()`` shows (``"tiled(4x8)"``, ``"strips(8x8)"``).
    q_rows ``[T * Tq]`` / kv_rows ``[T * R]``: token of each query / key slot (padding -> token N - 1,
    masked); dest ``[T * Tq]``: output token of each query slot (padding -> N: the kernel's scratch row).
    strips: the path's `StripLayout` (tiles in strip order; its ``strip_tokens`` replace kv_rows), else None.
    strip_share: tiled: the key slots strips would gather over those the tiles gather (None: no strips).
    runs: direct: ``[N, R]`` int32, the first token of each of a query's R runs of ``run_len`` keys along the
    grid's last axis of ``row_len`` tokens (`cpu_direct.key_runs`); num_tiles N, q_len 1, kv_len R * run_len.
    None (and cost inf) for a plan the direct path cannot run.
    masks: tiled and strips: additive ``[G, 1, Tq, R]``, one per group of like tiles, with ``tile_group [T]``
    the group of each tile (None: every tile full); masked-sdpa: ``[1, 1, N, N]`` (None: plain dense).
    dead: tokens whose queries attend no key (out 0, lse -inf), or None.
    cost: modelled single-thread seconds per (batch x head).
    """

    path: str
    label: str
    num_tokens: int
    num_tiles: int
    q_len: int
    kv_len: int
    q_rows: Tensor
    kv_rows: Tensor
    dest: Tensor
    masks: Tensor | None
    tile_group: Tensor | None
    dead: Tensor | None
    cost: float
    strips: StripLayout | None = None
    strip_share: float | None = None
    runs: Tensor | None = None
    run_len: int = 0
    row_len: int = 0

    @property
    def nbytes(self) -> int:
        tensors = (self.q_rows, self.kv_rows, self.dest, self.masks, self.tile_group, self.dead, self.runs)
        if self.strips is not None:
            tensors += (self.strips.strip_tokens, self.strips.tile_start)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def chunk_mask(self, t0: int, t1: int, batch: int = 1) -> Tensor | None:
        """The additive mask of tiles ``t0:t1`` for a flash batch of (batch item, tile) pairs, b-major: one
        group's ``[1, 1, Tq, R]`` (broadcast), or ``[batch * t, 1, Tq, R]`` when the chunk spans groups."""
        if self.masks is None or self.tile_group is None:
            return self.masks
        g0, g1 = int(self.tile_group[t0]), int(self.tile_group[t1 - 1])
        if g0 == g1:  # tiles are sorted by group
            return self.masks[g0 : g0 + 1]
        per_tile = self.masks.index_select(0, self.tile_group[t0:t1])
        return per_tile if batch == 1 else per_tile.repeat(batch, 1, 1, 1)

    def run_mask(self, t0: int, t1: int) -> Tensor | None:
        """The additive mask of tiles ``t0:t1`` of one strip run (any group order): ``[1, 1, Tq, R]`` when they
        share a group, else ``[t, 1, Tq, R]``."""
        if self.masks is None or self.tile_group is None:
            return self.masks
        groups = self.tile_group[t0:t1]
        g0 = int(groups[0])
        if bool((groups == g0).all()):
            return self.masks[g0 : g0 + 1]
        return self.masks.index_select(0, groups)


def _tile_label(plan: BlockPlan, path: str = "tiled") -> str:
    return path + "(" + "x".join(str(a.q_pos.shape[1]) for a in plan.axes) + ")"


def _all_pairs(plan: BlockPlan) -> bool:
    """Whether the plan is one full tile of every query over every key (a window covering the grid)."""
    n = plan.num_tokens
    return plan.num_tiles == 1 and not plan.has_mask and plan.kv_index.shape[1] == n and bool((plan.kv_index < n).all())


def choose_path(plan: BlockPlan) -> str:
    """``"masked-sdpa"`` where one masked call is modelled cheaper than the tiles (small grids) or the plan is
    dense (then with no mask, at any size), else ``"tiled"`` (which a call may still run as strips or direct:
    see `prepare_call`)."""
    n = plan.num_tokens
    if _all_pairs(plan):
        return "masked-sdpa"
    tiled = COST.tiled(plan.num_tiles, plan.q_index.shape[1], plan.kv_index.shape[1], n)
    if n <= MASKED_SDPA_MAX_TOKENS and COST.masked_sdpa(n) < tiled:
        return "masked-sdpa"
    return "tiled"


def _prepare_masked(plan: BlockPlan, dtype: torch.dtype) -> CpuPlan:
    n = plan.num_tokens
    masks = dead = None
    if not _all_pairs(plan):
        dense = plan.dense_mask()  # [N, N] bool
        masks = additive_mask(dense, dtype)[None, None]
        dead = (~dense.any(1)).nonzero().flatten()
    empty = torch.zeros(0, dtype=torch.long)
    return CpuPlan(
        "masked-sdpa", "masked-sdpa" if masks is not None else "dense-sdpa", n, 1, n, n, empty, empty, empty,
        masks, None, dead if dead is not None and dead.numel() else None, COST.masked_sdpa(n),
    )  # fmt: skip


def _dead_queries(masks: Tensor, tile_group: Tensor, q_index: Tensor, num_tokens: int) -> Tensor | None:
    """Tokens of the real query slots whose mask row is empty (never for GNA; a generic plan may have them),
    from bool ``masks [G, Tq, R]``, each tile's group ``[T]`` and query tokens ``[T, Tq]``; None if none."""
    empty_rows = ~masks.any(-1)  # [G, Tq]
    if not bool(empty_rows.any()):
        return None
    slots = empty_rows[tile_group] & (q_index < num_tokens)
    return q_index[slots].unique()


def _prepare_tiled(plan: BlockPlan, dtype: torch.dtype) -> CpuPlan:
    n, tiles = plan.num_tokens, plan.num_tiles
    tq, r = plan.q_index.shape[1], plan.kv_index.shape[1]
    q_rows, kv_rows = (i.reshape(-1).contiguous() for i in plan.gather_index)
    masks = tile_group = dead = None
    if plan.has_mask:
        bool_masks = torch.stack([plan.tile_mask(slice(g0, g0 + 1))[0] for g0, _, _ in plan.groups])  # [G, Tq, R]
        masks = additive_mask(bool_masks, dtype)[:, None]  # [G, 1, Tq, R]
        sizes = torch.tensor([g1 - g0 for g0, g1, _ in plan.groups])
        tile_group = torch.repeat_interleave(torch.arange(len(plan.groups)), sizes)
        dead = _dead_queries(bool_masks, tile_group, plan.q_index, n)
    cost = COST.tiled(tiles, tq, r, n)
    strip_slots = strip_key_slots(plan.axes)
    return CpuPlan(
        "tiled", _tile_label(plan), n, tiles, tq, r, q_rows, kv_rows, plan.q_index.reshape(-1).contiguous(),
        masks, tile_group, dead, cost, strip_share=None if strip_slots is None else strip_slots / (tiles * r),
    )  # fmt: skip


def _prepare_strips(plan: BlockPlan, dtype: torch.dtype) -> CpuPlan:
    layout = strip_layout(plan)
    if layout is None:
        raise ValueError(
            f"path='strips' needs every tile's keys to be consecutive positions on each axis (no dilation); "
            f"this plan on grid {plan.grid} has others"
        )
    n, tiles, tq = plan.num_tokens, layout.num_tiles, layout.q_index.shape[1]
    masks = dead = None
    if layout.masks is not None:
        masks = additive_mask(layout.masks, dtype)[:, None]  # [G, 1, Tq, R]
        assert layout.tile_group is not None
        dead = _dead_queries(layout.masks, layout.tile_group, layout.q_index, n)
    r = layout.box_rows * layout.row_tokens
    return CpuPlan(
        "strips", _tile_label(plan, "strips"), n, tiles, tq, r, layout.q_index.clamp(max=n - 1).reshape(-1),
        layout.strip_tokens.reshape(-1), layout.q_index.reshape(-1), masks, layout.tile_group, dead,
        COST.strips(tiles, tq, r, layout.gathered_rows * layout.row_tokens, n), layout,
    )  # fmt: skip


def _prepare_direct(plan: BlockPlan, dtype: torch.dtype) -> CpuPlan:
    n = plan.num_tokens
    found = cpu_direct.key_runs(plan) if dtype == torch.float32 else None
    empty = torch.zeros(0, dtype=torch.long)
    if found is None:  # kept (cached) so that the path choice asks once per plan
        return CpuPlan("direct", "direct", n, n, 1, 0, empty, empty, empty, None, None, None, math.inf)
    runs, run_len = found
    r = runs.shape[1]
    return CpuPlan(
        "direct", f"direct({r}x{run_len})", n, n, 1, r * run_len, empty, empty, empty, None, None, None,
        COST.direct(n, cpu_direct.score_vectors(r, run_len), r * run_len), runs=runs, run_len=run_len,
        row_len=plan.grid[-1],
    )  # fmt: skip


_PREPARE = {
    "tiled": _prepare_tiled, "strips": _prepare_strips, "masked-sdpa": _prepare_masked, "direct": _prepare_direct,
}


class _LruCache:
    """Values by key, least recently used first out, bounded in count and in bytes (``nbytes`` of a value).
    Holds its keys and values alive."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: collections.OrderedDict[tuple, tuple[object, int]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def _get(self, key: tuple, build: Callable[[], object], nbytes: Callable[[object], int]) -> object:
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit[0]
        value = build()  # outside the lock: another thread may build the same value meanwhile
        with self._lock:
            if key not in self._entries:
                size = nbytes(value)
                self._entries[key] = (value, size)
                self._bytes += size
                while len(self._entries) > 1 and (
                    len(self._entries) > self.max_entries or self._bytes > self.max_bytes
                ):
                    _, (_, old) = self._entries.popitem(last=False)
                    self._bytes -= old
            return self._entries[key][0] if key in self._entries else value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


class _PlanCache(_LruCache):
    """Prepared plans by (plan, dtype, path) (plans themselves are cached per shape by the methods)."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 256 * 2**20) -> None:
        super().__init__(max_entries, max_bytes)

    def get(self, plan: BlockPlan, dtype: torch.dtype, path: str | None = None) -> CpuPlan:
        def build() -> CpuPlan:
            return _PREPARE[choose_path(plan) if path is None else path](plan, dtype)

        return self._get((plan, dtype, path), build, lambda cp: cp.nbytes)  # type: ignore[attr-defined,return-value]


PLANS = _PlanCache()


def prepare(plan: BlockPlan, dtype: torch.dtype, path: str | None = None) -> CpuPlan:
    """The `CpuPlan` of ``plan`` in ``dtype`` (cached); ``path`` forces one of `PATHS` (tests, benchmarks)."""
    if path is not None and path not in PATHS:
        raise ValueError(f"path={path!r} is not one of {PATHS}")
    if path == "masked-sdpa" and plan.num_tokens > MASKED_SDPA_MAX_TOKENS and not _all_pairs(plan):
        raise ValueError(
            f"path='masked-sdpa' needs a grid of at most {MASKED_SDPA_MAX_TOKENS} tokens; "
            f"the grid {plan.grid} has {plan.num_tokens}"
        )
    if path == "direct" and dtype != torch.float32:
        raise ValueError(f"path='direct' runs fp32 only, got {dtype}")
    cp = PLANS.get(plan, dtype, path)
    if path == "direct":
        if cp.runs is None:
            raise ValueError(
                "path='direct' needs every query's keys as runs of consecutive tokens along the last axis, as many "
                f"for every query (no dilation there); this plan on grid {plan.grid} has others"
            )
        if cpu_direct.library() is None:
            raise ValueError(
                "path='direct' needs the CPU direct kernel, which could not be built here (see the warning)"
            )
    return cp


# --- worker threads -----------------------------------------------------------------------------------------


def _loaded_symbol(libraries: Sequence[str | Path | None], symbol: str) -> Callable | None:
    """``symbol`` of the first of ``libraries`` that is already loaded (RTLD_NOLOAD: never a second copy of a
    runtime), or None."""
    for name in libraries:
        if not name:
            continue
        try:
            return getattr(ctypes.CDLL(str(name), mode=os.RTLD_NOLOAD | os.RTLD_LAZY), symbol)
        except (OSError, AttributeError):
            continue
    return None


@functools.lru_cache(maxsize=1)
def _omp_set_num_threads() -> Callable[[int], None] | None:
    """``omp_set_num_threads`` of the OpenMP runtime torch already loaded (it sets the calling thread's
    count only), or None where there is none to find (torch built without GNU OpenMP, another platform)."""
    lib = Path(torch.__file__).parent / "lib"
    return _loaded_symbol([lib / "libgomp.so.1", ctypes.util.find_library("gomp")], "omp_set_num_threads")


@functools.lru_cache(maxsize=1)
def _mkl_set_num_threads_local() -> Callable[[int], int] | None:
    """MKL's ``MKL_Set_Num_Threads_Local`` (by value; the lower-case name takes a pointer) from the MKL linked
    into torch, or None where torch has no MKL. Needed because torch's lazy per-thread init copies an explicit
    ``torch.set_num_threads(n)`` into each new thread's MKL-local count, which OpenMP's setter does not touch."""
    if not torch.backends.mkl.is_available():
        return None
    lib = Path(torch.__file__).parent / "lib"
    return _loaded_symbol([lib / "libtorch_cpu.so", lib / "libtorch_cpu.dylib"], "MKL_Set_Num_Threads_Local")


class _Workers:
    """A process-wide pool of threads that each run torch ops on ONE intra-op thread.

    OpenMP's thread count is per thread, but ``torch.set_num_threads`` also sets the default that threads
    starting later read, which would leak into the caller's other threads. So a worker sets its own count
    through the OpenMP runtime torch loaded (``omp_set_num_threads``, checked to take effect); only where
    that runtime cannot be found does it fall back to ``torch.set_num_threads(1)`` followed by a helper
    thread that puts the process default back, under a lock. The pool is rebuilt after a fork (its threads
    do not exist in the child).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._size = 0
        self._pid = -1

    @staticmethod
    def _single_threaded() -> None:
        default = torch.get_num_threads()  # also initialises this thread's count from the process default
        # Measured: after the caller's torch.set_num_threads(2), two workers whose MKL-local count was left
        # at 2 ran a chunk of flash calls 4.8x slower than with it at 1 (0.46 s vs 0.097 s): 4 threads on 2 cores.
        mkl_setter = _mkl_set_num_threads_local()
        if mkl_setter is not None:
            mkl_setter(1)
        setter = _omp_set_num_threads()
        if setter is not None:
            setter(1)
            if torch.get_num_threads() == 1:
                return
        with _THREADS_LOCK:  # fallback: torch's setter, then the process default back
            torch.set_num_threads(1)
            restore = threading.Thread(target=torch.set_num_threads, args=(default,), name="diffattn-threads")
            restore.start()
            restore.join()

    def executor(self, workers: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pid != os.getpid() or self._size < workers:
                if self._pool is not None and self._pid == os.getpid():
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(workers, "diffattn-cpu", initializer=self._single_threaded)
                self._size, self._pid = workers, os.getpid()
            return self._pool


_THREADS_LOCK = threading.Lock()
WORKERS = _Workers()


def _inline(*tensors: Tensor) -> bool:
    """Whether to run on the calling thread: while torch.compile traces, or when autograd records."""
    if torch.compiler.is_compiling():
        return True
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def run_parallel(fn: Callable[[int, int], None], ranges: Sequence[tuple[int, int]], threads: int) -> None:
    """``fn(start, end)`` for every range: on the calling thread when ``threads`` is 1 or there is one
    range, else taken dynamically from one queue by the calling thread (on one intra-op thread) and
    ``threads - 1`` single-threaded workers (under the caller's grad and inference modes). Returns when
    every range is done; re-raises the first error.

    Why the caller takes ranges too, rather than wait: a sleeping worker woke 0.4-4 ms late (its core held
    by the spinning OpenMP thread of the op before), while the caller is already running. Measured at
    64x64 tokens (window 8x8, B 2, 4 heads, d 32, a linear layer before each call): quiet 22.2 ms against
    24.7 ms with two workers and the caller waiting, beside two spinning processes 34.9 ms against 37.8 ms
    (and 46.7 ms on the caller's thread alone); at 128x128, 54 vs 59 ms quiet, 122 vs 150 ms busy."""
    if threads <= 1 or len(ranges) <= 1:
        for a, b in ranges:
            fn(a, b)
        return
    todo = collections.deque(ranges)  # popleft is atomic: each range runs once
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def drain() -> None:
        while True:
            try:
                a, b = todo.popleft()
            except IndexError:
                return
            fn(a, b)

    def task() -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            drain()

    pool = WORKERS.executor(threads - 1)
    futures: list[Future] = [pool.submit(task) for _ in range(min(threads, len(ranges)) - 1)]
    errors: list[BaseException | None] = []
    try:
        with _one_intraop_thread():
            drain()
    except BaseException as error:  # the workers still finish what they took: none may write after we return
        todo.clear()
        errors.append(error)
    errors += [f.exception() for f in futures]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


class Scheduler:
    """Chooses, per call, between the caller's own OpenMP threads ("inline"), the worker threads ("workers")
    and, while other processes hold the cores, twice as many worker threads ("contended"), from what it
    measures of the caller's calls. Only speed depends on it: all three give the same bits.

    Why (measured on this 2-core machine, a linear layer before each call as in a model, GNA window 8x8,
    B 2, 4 heads, d 32; speedup over dense SDPA; "workers" = the caller and one worker taking chunks,
    `run_parallel`; busy = two processes spinning on the cores):

    ============  ======  ======  ======
    grid          32x32   64x64   128x128
    quiet inline  2.62x   8.94x   46.2x
    quiet workers 1.33x   6.75x   39.9x
    busy inline   0.12x   2.38x   12.5x
    busy workers  2.11x   7.86x   37.5x
    busy single   2.13x   5.88x   25.9x
    ============  ======  ======  ======

    On a quiet machine the caller's OpenMP team is already running (the op before leaves its threads
    spinning for a few ms, so a worker woken beside them waits for a core); on a busy one its statically
    split ops wait at every barrier for a descheduled thread (medians hide tails of 0.2 s for a 3 ms call),
    while chunks taken dynamically go to whichever thread runs. Calls modelled above `INLINE_MAX_S`
    (128x128 window 32: workers 6.1x, inline 3.3x) go to the workers.

    Contended calls run on ``oversubscribe`` times the allowed threads. The kernel shares the cores
    thread by thread with the other processes, and a chunk held by a descheduled thread stalls the call
    until it runs again; with more threads than cores, the others keep taking chunks meanwhile, and the
    call gets a larger share of the cores. Measured beside two spinning processes (no layer between calls;
    25 interleaved rounds, medians; quiet inline 2.30x and 9.39x): at 32x32, 2 threads 1.74x, 3 threads
    2.53x, 4 threads 2.80x; at 64x64, 7.43x, 8.30x, 9.08x. On a quiet machine 4 threads are slower than 2
    (64x64: 6.06x against 7.85x), hence only while contended.

    A small contended call (`TEAM_MAX_S`; the tiled and direct paths offer it as ``team``; the direct path's
    is its one kernel call) runs instead as one chunk
    whose gathers and scatters run on the caller's thread alone and whose flash op runs on the caller's
    OpenMP team. Why: an OpenMP op just before (a linear layer, dense SDPA) leaves its team's other thread
    spinning for ~10 ms, taking a share of the cores from the workers; one OpenMP region right after puts that
    thread to work, while the workers, having run in the last call, woke ~4 ms late. Measured at 32x32 (B 2,
    4 heads of 32, window 8) beside two spinning processes, in `bench_engine`'s 32x32 case with its `before`
    rounds: median 9.3-10.5 ms against 12.5-14.0 ms on the workers (three runs of 80-100 rounds). Only one
    region: with the flash op of two or four chunks on the team, a call took 16 and 32 ms, every further
    region risking a stall of a scheduler tick (4 ms here) while its other thread is descheduled. And only
    small calls: a 64x64 blocked call (9.5 ms modelled, against 6.5) took 20.2 ms so, against 14.7-16.6 ms on
    the workers in earlier runs.

    The caller's CPU share of a call's wall time tells quiet from busy: 1.00 inline on a quiet machine,
    0.42-0.63 beside two spinning processes (measured); a workers call measures it too (quiet, the caller
    takes chunks until the last). A share below ``contended_share`` on ``strikes`` measured calls in a row
    (one alone can be a page fault or a slow thread wake-up: seen once in 36 calls of a quiet 256 px run)
    makes the next ``hold_s`` seconds of calls contended, unmeasured. Then one call measures again in its
    quiet mode: still contended, and the hold doubles (up to ``max_hold_s``), so that a long busy spell pays
    for few slow probes; quiet, and the hold is back at ``hold_s``.
    """

    def __init__(
        self,
        contended_share: float = 0.8,
        hold_s: float = 2.0,
        max_hold_s: float = 32.0,
        strikes: int = 2,
        oversubscribe: int = 2,
    ) -> None:
        if not 0 < contended_share <= 1 or not 0 < hold_s <= max_hold_s or strikes < 1 or oversubscribe < 1:
            raise ValueError(
                f"need 0 < contended_share <= 1, 0 < hold_s <= max_hold_s, strikes >= 1 and oversubscribe >= 1; "
                f"got {contended_share}, {hold_s}, {max_hold_s}, {strikes}, {oversubscribe}"
            )
        self.contended_share, self.hold_s, self.max_hold_s, self.strikes = contended_share, hold_s, max_hold_s, strikes
        self.oversubscribe = oversubscribe
        self._contended_until = 0.0
        self._hold = hold_s  # the next hold
        self._low = 0  # measured calls in a row below the share
        self._probing = False  # the last hold ended and no call has measured quiet since
        self.contended = 0  # times it found the caller contended

    def mode(self, cost_s: float, threads: int) -> str:
        """Where a call modelled at ``cost_s`` single-thread seconds runs when ``threads`` are allowed:
        ``"inline"`` (the caller's own threads), ``"workers"`` (large calls) or ``"contended"`` (every call
        while contended: ``oversubscribe * threads`` threads)."""
        if threads <= 1:
            return "inline"
        if time.monotonic() < self._contended_until:
            return "contended"
        return "workers" if cost_s > INLINE_MAX_S else "inline"

    def record(self, wall_s: float, cpu_s: float) -> None:
        """What a measured call saw: its wall time and the caller thread's CPU time."""
        if not (wall_s > 0 and cpu_s < self.contended_share * wall_s):
            self._low, self._probing, self._hold = 0, False, self.hold_s
            return
        self._low += 1
        if self._low >= self.strikes or self._probing:
            self._low, self._probing = 0, True
            self.contended += 1
            self._contended_until = time.monotonic() + self._hold
            self._hold = min(2 * self._hold, self.max_hold_s)

    def run(
        self, fn: Callable[[int], None], cost_s: float, threads: int, forced: bool = False,
        team: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        """``fn(threads)`` with the threads chosen for ``cost_s`` (``forced``: exactly ``threads``), measuring
        the calls that run in a quiet mode; while contended, ``team()`` instead where the call offers one."""
        if forced or threads <= 1:
            fn(threads)
            return
        mode = self.mode(cost_s, threads)
        if mode == "contended":
            if team is not None:
                team()
            else:
                fn(threads * self.oversubscribe)
            return
        wall, cpu = time.perf_counter(), time.thread_time()
        fn(1 if mode == "inline" else threads)
        self.record(time.perf_counter() - wall, time.thread_time() - cpu)


SCHEDULER = Scheduler()


@contextlib.contextmanager
def _one_intraop_thread() -> Iterator[None]:
    """The calling thread's own OpenMP and MKL counts at 1 for the block, then back (both are per thread:
    no other thread sees the change). Where the thread-local OpenMP setter is missing, the block runs as
    is (on the caller's threads): never through ``torch.set_num_threads``, which is process-wide."""
    omp, mkl = _omp_set_num_threads(), _mkl_set_num_threads_local()
    if omp is None:
        yield
        return
    before = torch.get_num_threads()
    mkl_before = mkl(1) if mkl is not None else None
    omp(1)
    try:
        yield
    finally:
        omp(before)
        if mkl is not None and mkl_before is not None:
            mkl(mkl_before)


def split(total: int, pieces: int) -> list[tuple[int, int]]:
    """``[0, total)`` in ``pieces`` near-equal consecutive ranges (fewer if ``total`` is smaller)."""
    pieces = max(1, min(pieces, total))
    bounds = [round(i * total / pieces) for i in range(pieces + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def num_chunks(seconds: float, nbytes: int, units: int, threads: int, chunk_bytes: int | None = None) -> int:
    """How many chunks to cut ``units`` of work into: modelled ``seconds`` (single thread) of at least
    `MIN_CHUNK_S` each, at most `CHUNKS_PER_WORKER` per thread, and at most ``chunk_bytes`` (default
    `CHUNK_BYTES`) of temporaries."""
    by_time = min(CHUNKS_PER_WORKER * threads, int(seconds / MIN_CHUNK_S)) if threads > 1 else 1
    by_bytes = math.ceil(nbytes / (CHUNK_BYTES if chunk_bytes is None else chunk_bytes))
    return max(1, min(units, max(by_time, by_bytes)))


# --- the kernels -----------------------------------------------------------------------------------------------


_WORKSPACE = threading.local()


def _gather(rows: Tensor, index: Tensor, slot: int, reuse: bool) -> Tensor:
    """``rows [B * S, C].index_select(0, index)``, into this thread's workspace buffer ``slot`` when ``reuse``
    (valid until this thread's next gather into the same slot). Rows of ``[B * S, C]``, not dim 1 of
    ``[B, S, C]``: 1.6x faster (measured: 0.028 vs 0.044 ms for 2 x 1650 rows of 128).

    Why the workspace: a chunk's fresh gathers (MBs) were freed at its end, and glibc handed the heap top
    back to the kernel, so the next chunk page-faulted them in again: a 32x32 grid's call varied 4.9-7.2 ms
    between processes, 3.2-4.2 ms with the allocator tuned not to (measured)."""
    if not reuse:
        return rows.index_select(0, index)
    shape = (index.numel(), rows.shape[1])
    numel = math.prod(shape)
    buffers: dict = _WORKSPACE.__dict__
    buf = buffers.get(slot)
    if buf is None or buf.numel() < numel or buf.dtype != rows.dtype or buf.device != rows.device:
        buf = buffers[slot] = rows.new_empty(max(numel, 0 if buf is None else buf.numel()))
    return torch.index_select(rows, 0, index, out=buf[:numel].view(shape))


def _rows(q: Tensor, k: Tensor, v: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor, Tensor]:
    """What the tiled and strips paths share: q, k, v as rows ``[B * S, H*D]`` of contiguous ``[B, S, H, D]``,
    and the outputs as rows ``[B * S + 1, H*D]`` and ``[B * S + 1, H]`` fp32 (row ``B * S`` is the scratch row
    of every padded query slot, so that the results are contiguous views of the rest)."""
    b, s, h, d = q.shape
    return (
        tuple(t.reshape(b * s, h * d) for t in (q, k, v)),  # type: ignore[return-value]
        q.new_empty(b * s + 1, h * d),
        torch.empty(b * s + 1, h, dtype=torch.float32),
    )


def _batch_rows(cp: CpuPlan, batch: int, tokens: int) -> tuple[Tensor, Tensor, Tensor]:
    """The first row of each batch item in the ``[B * S, ...]`` rows, ``[B, 1]``; and per (batch item, query
    slot) ``[B, T * Tq]``: its input row, and its output row (padding: the scratch row ``B * S``)."""
    offsets = torch.arange(batch)[:, None] * tokens
    return offsets, cp.q_rows + offsets, torch.where(cp.dest == tokens, batch * tokens, cp.dest + offsets)


@dataclasses.dataclass(frozen=True, eq=False)
class TiledChunk:
    """One chunk of a tiled call over ``B`` batch items, ready to run (cached in `CHUNKS`): ``tiles`` tiles;
    q_index ``[B * t * Tq]`` / kv_index ``[B * t * R]``: the input row of each (batch item, slot), b-major;
    dest ``[B * t * Tq]``: the output row of each query slot (padding: the scratch row ``B * S``); mask:
    additive, broadcastable to ``[B * t, 1, Tq, R]`` (None: every tile full)."""

    tiles: int
    q_index: Tensor
    kv_index: Tensor
    dest: Tensor
    mask: Tensor | None

    @property
    def nbytes(self) -> int:
        tensors = (self.q_index, self.kv_index, self.dest, self.mask)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _build_tiled_chunks(cp: CpuPlan, batch: int, tokens: int, pieces: int) -> tuple[TiledChunk, ...]:
    tq, r = cp.q_len, cp.kv_len
    offsets, q_index, dest = _batch_rows(cp, batch, tokens)
    kv_index = cp.kv_rows + offsets  # [B, T * R]
    return tuple(
        TiledChunk(
            t1 - t0,
            q_index[:, t0 * tq : t1 * tq].reshape(-1),
            kv_index[:, t0 * r : t1 * r].reshape(-1),
            dest[:, t0 * tq : t1 * tq].reshape(-1),
            cp.chunk_mask(t0, t1, batch),
        )
        for t0, t1 in split(cp.num_tiles, pieces)
    )


class _ChunkCache(_LruCache):
    """A tiled call's `TiledChunk` by (prepared plan, batch, tokens, chunks).

    Why: building a chunk's index slices and mask costs ~10 small ops, and a 32x32 grid's call runs 4 chunks
    in ~4 ms; built once, the call ran 1.16x faster (3.99 vs 3.41 ms; 60 shuffled rounds, each beside dense
    SDPA; B 2, 4 heads of 32, window 8), 1.10x at 64x64 and 1.06x at 128x128."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 128 * 2**20) -> None:
        super().__init__(max_entries, max_bytes)

    def get(self, cp: CpuPlan, batch: int, tokens: int, pieces: int) -> tuple[TiledChunk, ...]:
        def nbytes(chunks: object) -> int:
            return sum(c.nbytes for c in chunks)  # type: ignore[attr-defined]

        build = functools.partial(_build_tiled_chunks, cp, batch, tokens, pieces)
        return self._get((cp, batch, tokens, pieces), build, nbytes)  # type: ignore[return-value]


CHUNKS = _ChunkCache()


def _tiled(
    q: Tensor, k: Tensor, v: Tensor, cp: CpuPlan, scale: float | None, threads: int, forced: bool
) -> tuple[Tensor, Tensor]:
    b, s, h, d = q.shape
    tq, r = cp.q_len, cp.kv_len
    (qf, kf, vf), out_rows, lse_rows = _rows(q, k, v)
    reuse = not _inline(q, k, v)  # out= gathers cannot record autograd

    def chunk(c: TiledChunk, team: bool = False) -> None:
        """Gather, attend, scatter one chunk; ``team``: the gathers and scatters on one intra-op thread and
        the flash op on the caller's OpenMP team (see `Scheduler`)."""
        movement = _one_intraop_thread if team else contextlib.nullcontext
        with movement():  # [B * t * L, H*D] gathered rows -> [B*t, H, L, D] views: batch = (batch, tile), b-major
            qt = _gather(qf, c.q_index, 0, reuse).view(b * c.tiles, tq, h, d).transpose(1, 2)
            kt = _gather(kf, c.kv_index, 1, reuse).view(b * c.tiles, r, h, d).transpose(1, 2)
            vt = _gather(vf, c.kv_index, 2, reuse).view(b * c.tiles, r, h, d).transpose(1, 2)
        o, l = sdpa_with_lse(qt, kt, vt, c.mask, scale)  # [B*t, H, Tq, D], [B*t, H, Tq]
        with movement():  # the flash op lays its outputs out as its q ([B*t, Tq, H, D], [B*t, Tq, H]): views
            out_rows.index_copy_(0, c.dest, o.transpose(1, 2).reshape(b * c.tiles * tq, h * d))
            lse_rows.index_copy_(0, c.dest, l.transpose(1, 2).reshape(b * c.tiles * tq, h))

    def run(chosen: int) -> None:
        pieces = num_chunks(cost, per_tile_bytes * cp.num_tiles, cp.num_tiles, chosen)
        chunks = CHUNKS.get(cp, b, s, pieces)
        run_parallel(lambda i, _: chunk(chunks[i]), [(i, i + 1) for i in range(len(chunks))], chosen)

    def on_team() -> None:
        (whole,) = CHUNKS.get(cp, b, s, 1)
        chunk(whole, team=True)

    cost = cp.cost * b * h
    per_tile_bytes = b * h * d * (2 * r + 2 * tq) * q.element_size()
    SCHEDULER.run(run, cost, threads, forced, team=on_team if cost <= TEAM_MAX_S and reuse else None)
    return out_rows[: b * s].view(b, s, h, d), lse_rows[: b * s].view(b, s, h)


def _stripped(
    q: Tensor, k: Tensor, v: Tensor, cp: CpuPlan, scale: float | None, threads: int, forced: bool
) -> tuple[Tensor, Tensor]:
    """The strips path: each piece of a run gathers its strip rows once, and its tiles read their key boxes
    as overlapping strided views of them (one flash call per batch item)."""
    layout = cp.strips
    assert layout is not None
    b, s, h, d = q.shape
    hd, tq, box, p = h * d, cp.q_len, cp.kv_len, layout.row_tokens
    (qf, kf, vf), out_rows, lse_rows = _rows(q, k, v)
    offsets, q_index, dest = _batch_rows(cp, b, s)
    starts = layout.tile_start.tolist()
    reuse = not _inline(q, k, v)

    def piece(t0: int, t1: int, step: int) -> None:
        t, strip, first = t1 - t0, layout.strip_of(t0), starts[t0] * p
        rows = ((t - 1) * step + layout.box_rows) * p
        index = (layout.strip_tokens[strip, first : first + rows] + offsets).reshape(-1)  # [B * rows]
        kb, vb = _gather(kf, index, 1, reuse), _gather(vf, index, 2, reuse)  # [B * rows, H*D]
        qt = _gather(qf, q_index[:, t0 * tq : t1 * tq].reshape(-1), 0, reuse).view(b, t, tq, h, d)
        mask = cp.run_mask(t0, t1)
        for i in range(b):
            # tile j's keys: strip rows j * step .. + box_rows, i.e. [t, H, box, D] views with batch stride
            # step * p rows (0 for boxes clamped at an edge); the flash op reads strided operands as they are
            shape, strides = (t, h, box, d), (step * p * hd, d, hd, 1)
            kt, vt = (x[i * rows : (i + 1) * rows].as_strided(shape, strides) for x in (kb, vb))
            o, l = sdpa_with_lse(qt[i].transpose(1, 2), kt, vt, mask, scale)  # [t, H, Tq, D], [t, H, Tq]
            to = dest[i, t0 * tq : t1 * tq]
            out_rows.index_copy_(0, to, o.transpose(1, 2).reshape(t * tq, hd))
            lse_rows.index_copy_(0, to, l.transpose(1, 2).reshape(t * tq, h))

    gathered_bytes = b * hd * (2 * layout.gathered_rows * p + 2 * cp.num_tiles * tq) * q.element_size()

    def run(chosen: int) -> None:
        # cut long runs so that there are about as many pieces as `num_chunks` asks for
        wanted = num_chunks(cp.cost * b * h, gathered_bytes, cp.num_tiles, chosen, STRIP_PIECE_BYTES)
        most = max(1, math.ceil(cp.num_tiles / wanted))
        pieces = [
            (t0 + a, t0 + c, step)
            for t0, t1, step in layout.runs
            for a, c in split(t1 - t0, math.ceil((t1 - t0) / most))
        ]
        # longest first: runs differ in length (clamped edge runs are short), and a long piece taken last
        # leaves the other threads idle (measured 1.03x [0.99-1.07], 15 rounds, speedup.py's stride-1 row)
        pieces.sort(key=lambda p: p[0] - p[1])
        run_parallel(lambda i, _: piece(*pieces[i]), [(i, i + 1) for i in range(len(pieces))], chosen)

    SCHEDULER.run(run, cp.cost * b * h, threads, forced)
    return out_rows[: b * s].view(b, s, h, d), lse_rows[: b * s].view(b, s, h)


def _direct(
    q: Tensor, k: Tensor, v: Tensor, cp: CpuPlan, scale: float | None, threads: int, forced: bool
) -> tuple[Tensor, Tensor]:
    """The direct path: one kernel call over every query on the caller's OpenMP threads, or ranges of queries
    taken by the workers (one intra-op thread each), as `Scheduler` chooses."""
    b, s, h, d = q.shape
    assert cp.runs is not None
    result: list[tuple[Tensor, Tensor]] = []

    def run(chosen: int) -> None:
        ranges = split(s, num_chunks(cost, 0, s, chosen)) if chosen > 1 else None

        def on_workers(fn: Callable[[int, int], None], todo: list[tuple[int, int]]) -> None:
            run_parallel(fn, todo, chosen)

        result.append(cpu_direct.attend(q, k, v, cp.runs, cp.run_len, cp.row_len, scale, ranges, on_workers))

    cost = _direct_cost(cp, d) * b * h
    SCHEDULER.run(run, cost, threads, forced, team=(lambda: run(1)) if cost <= TEAM_MAX_S else None)
    return result[0]


def sdpa_rows(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    scale: float | None,
    threads: int,
    cost: float,
    forced: bool = False,
) -> tuple[Tensor, Tensor]:
    """SDPA of ``q [B, Sq, H, D]`` over ``k/v [B, Sk, H, D]`` with an additive ``mask`` broadcastable to
    ``[B, H, Sq, Sk]``, its query rows cut into chunks (``cost``: modelled single-thread seconds of the whole
    call) run where `SCHEDULER` says, or on exactly ``threads`` when ``forced``.
    Returns ``(out [B, Sq, H, D], lse [B, Sq, H] fp32)``."""
    b, sq, h, d = q.shape
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D] views
    out = q.new_empty(b, sq, h, d)
    lse = torch.empty(b, sq, h, dtype=torch.float32)

    def rows(a: int, c: int) -> None:
        m = mask if mask is None or mask.shape[-2] == 1 else mask[..., a:c, :]
        o, l = sdpa_with_lse(qh[:, :, a:c], kh, vh, m, scale)
        out[:, a:c].copy_(o.transpose(1, 2))
        lse[:, a:c].copy_(l.transpose(1, 2))

    def run(chosen: int) -> None:
        run_parallel(rows, split(sq, num_chunks(cost, 0, sq, chosen)), chosen)

    SCHEDULER.run(run, cost, threads, forced)
    return out, lse


def prepare_call(plan: BlockPlan, q: Tensor, path: str | None = None, inline: bool = False) -> CpuPlan:
    """The `CpuPlan` a call of ``plan`` with queries ``q [B, S, H, D]`` runs (``path`` forces one): `prepare`'s,
    or its strips where they pay for keys of q's size (`_strips_pay`), or the direct path where it is modelled
    cheaper at q's head dim (fp32, its kernel built, and not ``inline``: while autograd records or torch.compile
    traces, as the direct kernel has neither a backward nor a fake kernel)."""
    if path == "direct" and inline:
        raise ValueError("path='direct' runs inference only: not while autograd records or torch.compile traces")
    cp = prepare(plan, q.dtype, path)
    if path is not None:
        return cp
    if cp.strip_share is not None and _strips_pay(cp.strip_share, batch_item_bytes(q)):
        cp = prepare(plan, q.dtype, "strips")
    if q.dtype == torch.float32 and not inline and not _all_pairs(plan):
        direct = PLANS.get(plan, q.dtype, "direct")
        cheaper = direct.runs is not None and _direct_cost(direct, q.shape[-1]) < cp.cost
        if cheaper and cpu_direct.library() is not None:
            cp = direct
    return cp


def _direct_cost(cp: CpuPlan, head_dim: int) -> float:
    """Modelled single-thread seconds per (batch x head) of a direct `CpuPlan` at ``head_dim`` (its ``cost`` is at
    the fitted head dim, 32)."""
    assert cp.runs is not None
    return COST.direct(cp.num_tokens, cpu_direct.score_vectors(cp.runs.shape[1], cp.run_len), cp.kv_len, head_dim)


def batch_item_bytes(q: Tensor) -> int:
    """Bytes of one batch item of ``q [B, S, H, D]`` (and of K: what decides whether a call runs as strips)."""
    return math.prod(q.shape[1:]) * q.element_size()


def _strips_pay(share: float, item_bytes: int) -> bool:
    """Whether a call of a tiled plan, whose strips gather ``share`` of its tiles' key slots and whose K of one
    batch item has ``item_bytes``, runs faster as strips: when K no longer fits the cache (the tiles' gathers
    then run at memory speed) and the strips copy at most `STRIPS_MAX_SHARE` of the tiles' key slots. Else the
    tiles win: their gathers hit the cache, and strips pay one flash call per run and batch item where a
    chunk of tiles makes one."""
    return share <= STRIPS_MAX_SHARE and item_bytes >= STRIPS_MIN_BYTES


def _threads(*tensors: Tensor) -> int:
    return 1 if _inline(*tensors) else torch.get_num_threads()


def block_sparse_attention_cpu(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    plan: BlockPlan,
    scale: float | None = None,
    path: str | None = None,
    workers: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention of every query over its tile's keys.

    Args:
        q, k, v: ``[B, S, H, D]`` with ``S == plan.num_tokens`` (grid order).
        plan: the tiles and keys to attend.
        path: force one of `PATHS` (default: `prepare_call`'s choice).
        workers: threads to share the chunks (the calling thread and ``workers - 1`` single-threaded workers,
            `run_parallel`); 1 runs every chunk on the calling thread, on its own intra-op threads. Default:
            `SCHEDULER` picks between the two per call, with ``torch.get_num_threads()`` threads. Autograd
            and torch.compile tracing always run on the calling thread.
    Returns:
        ``(out [B, S, H, D], lse [B, S, H] fp32)``.
    """
    b, s, h, d = q.shape
    if s != plan.num_tokens:
        raise ValueError(f"sequence length {s} does not match the plan's grid {plan.grid} ({plan.num_tokens})")
    cp = prepare_call(plan, q, path, _inline(q, k, v))
    note_path(cp.label)
    if b * h == 0:  # no (batch, head): nothing to attend
        return q.new_empty(b, s, h, d), torch.empty(b, s, h, dtype=torch.float32)
    threads = _threads(q, k, v) if workers is None or workers > 1 else 1
    forced = workers is not None
    if forced and threads > 1:
        threads = workers
    if cp.path == "masked-sdpa":
        out, lse = sdpa_rows(q, k, v, cp.masks, scale, threads, cp.cost * b * h, forced)
    elif cp.path == "strips":
        out, lse = _stripped(q, k, v, cp, scale, threads, forced)
    elif cp.path == "direct":
        out, lse = _direct(q, k, v, cp, scale, threads, forced)
    else:
        out, lse = _tiled(q, k, v, cp, scale, threads, forced)
    if cp.dead is not None:  # the flash op gives lse 0 (not -inf) to a query with no key
        out.index_fill_(1, cp.dead, 0.0)
        lse.index_fill_(1, cp.dead, float("-inf"))
    return out, lse


def dense_attention_cpu(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Every query of ``q [B, Sq, H, D]`` over every key of ``k/v [B, Sk, H, D]`` with an optional additive
    ``bias`` broadcastable to ``[B, H, Sq, Sk]`` (``-inf`` drops a pair); a query that drops every key
    gets out 0 and lse -inf. Returns ``(out [B, Sq, H, D], lse [B, Sq, H] fp32)``."""
    b, sq, h, d = q.shape
    if b * h == 0 or sq == 0:
        return q.new_empty(b, sq, h, d), torch.empty(b, sq, h, dtype=torch.float32)
    if k.shape[1] == 0:  # no key at all: the empty partial
        return q.new_zeros(b, sq, h, d), torch.full((b, sq, h), float("-inf"))
    if bias is not None and bias.dtype not in (q.dtype, torch.float32):  # the flash op takes either
        bias = bias.float()
    cost = b * h * COST.dense(sq, k.shape[1])
    out, lse = sdpa_rows(q, k, v, bias, scale, _threads(q, k, v), cost)
    if bias is not None:
        dead = torch.isneginf(bias).all(-1)  # [.., Sq] over broadcast dims of [B, H, Sq]
        if bool(dead.any()):
            dead = dead.expand(b, h, sq).transpose(1, 2)  # [B, Sq, H]
            out = out.masked_fill(dead[..., None], 0.0)
            lse = lse.masked_fill(dead, float("-inf"))
    return out, lse


def extra_attention_cpu(
    q: Tensor, extra_k: Tensor, extra_v: Tensor, extra_mask: Tensor | None = None, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Every query of ``q [B, S, H, D]`` over ``extra_k/v [B, T, H, D]`` with a key-padding ``extra_mask``
    bool ``[B, T]`` (True = valid). A batch item whose mask is all False gets out 0 and lse -inf (its
    partial is empty), as the reference does."""
    check_bool_mask("extra_mask", extra_mask)
    bias = None if extra_mask is None else additive_mask(extra_mask, q.dtype)[:, None, None, :]  # [B, 1, 1, T]
    return dense_attention_cpu(q, extra_k, extra_v, bias, scale)
