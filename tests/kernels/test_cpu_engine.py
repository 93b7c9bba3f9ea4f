"""The CPU engine: its exact paths (tiled, strips, masked sdpa) agree where the engine switches, the query tile
follows the window, prepared plans are cached within bounds, the worker threads leave the caller's thread
count alone and give bit-identical results, and the no-silent-wrong-result cases of issue 23 section 4
(all-False text masks, NaN inputs, float masks, batch 0) on every backend."""

from __future__ import annotations

import itertools
import math
import sys
import threading

import pytest
import torch

import diffattn.kernels.cpu as cpu
from diffattn.functional import gna
from diffattn.kernels import (
    AxisTiling,
    BlockPlan,
    attend_extra,
    block_sparse_attention,
    get_backend,
    record_paths,
    reference_attention,
)
from diffattn.kernels.strips import strip_key_slots, strip_layout
from diffattn.methods.gna import GNAConfig, default_q_tile, gna_plan, gna_q_tile
from diffattn.methods.naive import gna_mask

from ..helpers import randn

try:
    from diffattn.kernels import triton_bsa
except ImportError:  # triton not installed
    triton_bsa = None

INTERPRETED = triton_bsa is not None and triton_bsa.INTERPRET
BACKENDS = ["cpu", "reference"] + (["triton"] if INTERPRETED else [])
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}
CPU = get_backend("cpu")


@pytest.fixture
def no_direct(monkeypatch):
    """The CPU backend as on a machine where the direct kernel cannot be built: tests of the tiled and strips
    choices run on plans the direct path would otherwise take."""
    from diffattn.kernels import cpu_direct

    monkeypatch.setattr(cpu_direct, "library", lambda: None)


def _qkv(b: int, n: int, h: int, d: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    return tuple(randn(b, n, h, d, seed=seed + i).to(dtype) for i in range(3))


def _sparse(backend: str, q, k, v, plan, **kw):
    """``(out, lse)`` of a plan on a backend; triton (interpreter) through its kernel entry point."""
    if backend == "triton":
        ek, ev, em = kw.get("extra_k"), kw.get("extra_v"), kw.get("extra_mask")
        return triton_bsa.block_sparse_attention_triton(q, k, v, plan, extra_k=ek, extra_v=ev, extra_mask=em)
    if backend == "cpu-strips":
        assert not kw, kw
        return cpu.block_sparse_attention_cpu(q, k, v, plan, path="strips")
    return block_sparse_attention(q, k, v, plan, backend=backend, return_lse=True, **kw)


# --- the two paths --------------------------------------------------------------------------------------------


def _case_id(case: tuple[tuple[int, ...], ...]) -> str:
    """``g20x23-w5x7-s1x2`` (grid, window, stride and, when given, ``-t`` query tile)."""
    return "-".join(key + "x".join(map(str, t)) for key, t in zip("gwst", case))


def _switch_cases() -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(grid, window, stride) on both sides of every place where the cost model switches path, as the grid
    grows, for a few windows and strides in 1-D, 2-D and 3-D."""
    cases = []
    families = [
        (lambda n: (n, n), (3, 3), (1, 1)),
        (lambda n: (n, n), (5, 5), (2, 2)),
        (lambda n: (n, n + 3), (8, 8), (1, 1)),
        (lambda n: (4 * n,), (7,), (1,)),
        (lambda n: (2, n, n), (2, 3, 3), (1, 1, 1)),
    ]
    for make, window, stride in families:
        before = None
        for n in range(2, 40):
            grid = make(n)
            resolved = GNAConfig(window=window, stride=stride).resolve(grid)
            plan = gna_plan(grid, *resolved, gna_q_tile(grid, *resolved, CPU))
            path = cpu.choose_path(plan)
            if before is not None and path != before[1]:
                cases += [c for c in (before[0], (grid, window, stride)) if c not in cases]
            before = ((grid, window, stride), path)
    return cases


SWITCH_CASES = _switch_cases()


def test_the_cost_model_switches_path_as_grids_grow():
    """Small grids take one masked SDPA call, larger ones the tiles: the switch points exist (and the
    identity test below runs on both sides of each; `test_cpu_direct` covers the switch to the direct path)."""
    assert len(SWITCH_CASES) >= 8, SWITCH_CASES
    paths = set()
    for grid, window, stride in SWITCH_CASES:
        resolved = GNAConfig(window=window, stride=stride).resolve(grid)
        paths.add(cpu.choose_path(gna_plan(grid, *resolved, gna_q_tile(grid, *resolved, CPU))))
    assert paths == {"tiled", "masked-sdpa"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "case", SWITCH_CASES, ids=_case_id
)
def test_tiled_and_masked_sdpa_paths_agree_where_the_model_switches(case, dtype):
    grid, window, stride = case
    resolved = GNAConfig(window=window, stride=stride).resolve(grid)
    plan = gna_plan(grid, *resolved, gna_q_tile(grid, *resolved, CPU))
    q, k, v = _qkv(2, math.prod(grid), 3, 16, dtype, seed=math.prod(grid))
    tiled = cpu.block_sparse_attention_cpu(q, k, v, plan, path="tiled")
    masked = cpu.block_sparse_attention_cpu(q, k, v, plan, path="masked-sdpa")
    tol = TOL[dtype]
    torch.testing.assert_close(tiled[0].float(), masked[0].float(), atol=tol, rtol=tol)
    torch.testing.assert_close(tiled[1], masked[1], atol=tol, rtol=tol)
    ref, ref_lse = reference_attention(q, k, v, gna_mask(grid, *resolved))
    torch.testing.assert_close(tiled[0].float(), ref.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(tiled[1], ref_lse, atol=tol, rtol=tol)


def test_a_window_covering_the_grid_is_one_sdpa_call_without_a_mask_at_any_size():
    grid = (48, 49)  # 2352 tokens: above the masked path's limit, but no mask is needed
    q, k, v = _qkv(1, 2352, 2, 8)
    with record_paths() as seen:
        out = gna(q, k, v, grid, 64, backend="cpu")
    assert seen == ["dense-sdpa"]
    want = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_masked_sdpa_path_is_refused_on_large_grids():
    plan = gna_plan((64, 64), (3, 3), (1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"at most 2048 tokens; the grid \(64, 64\) has 4096"):
        cpu.prepare(plan, torch.float32, "masked-sdpa")
    with pytest.raises(ValueError, match=r"path='fast' is not one of \('tiled', 'strips', 'masked-sdpa', 'direct'"):
        cpu.prepare(plan, torch.float32, "fast")


# --- strips ------------------------------------------------------------------------------------------------

STRIP_CASES = [  # (grid, window, stride, query tile): 1-, 2- and 3-D, edges, grids off the tile, strides > 1
    ((37,), (7,), (1,), (8,)),
    ((20, 23), (5, 7), (1, 2), (4, 8)),
    ((32, 32), (8, 8), (1, 1), (4, 8)),
    ((15, 13), (6, 4), (3, 1), (2, 16)),
    ((16, 16), (4, 4), (4, 4), (4, 4)),
    ((16, 16), (4, 4), (4, 4), (1, 16)),
    ((4, 9, 11), (2, 3, 5), (1, 1, 2), (1, 4, 4)),
    ((6, 10, 10), (3, 5, 5), (1, 1, 1), (2, 2, 8)),
]


@pytest.mark.parametrize("case", STRIP_CASES, ids=_case_id)
def test_strips_attend_exactly_the_plans_pairs(case):
    """Rebuilt from the strips alone (each tile's box of strip rows and its mask), the attended (query, key)
    pairs are the plan's, every one of them, and no other."""
    grid, window, stride, tile = case
    plan = gna_plan(grid, window, stride, (1,) * len(grid), tile)
    layout = strip_layout(plan)
    n = plan.num_tokens
    got = torch.zeros(n + 1, n, dtype=torch.bool)
    box = layout.box_rows * layout.row_tokens
    for t in range(layout.num_tiles):
        first = int(layout.tile_start[t]) * layout.row_tokens
        keys = layout.strip_tokens[layout.strip_of(t), first : first + box]
        live = torch.ones(layout.q_index.shape[1], box, dtype=torch.bool)
        if layout.masks is not None:
            live = layout.masks[layout.tile_group[t]]
        got[layout.q_index[t][:, None], keys[None, :]] |= live
    assert torch.equal(got[:n], plan.dense_mask())
    assert sorted(layout.q_index[layout.q_index < n].tolist()) == list(range(n))  # every query once


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", STRIP_CASES, ids=_case_id)
def test_strips_and_tiled_paths_agree(case, dtype):
    grid, window, stride, tile = case
    plan = gna_plan(grid, window, stride, (1,) * len(grid), tile)
    q, k, v = _qkv(2, plan.num_tokens, 3, 16, dtype, seed=plan.num_tokens)
    with record_paths() as seen:
        strips = cpu.block_sparse_attention_cpu(q, k, v, plan, path="strips")
    assert seen == [cpu.prepare(plan, dtype, "tiled").label.replace("tiled", "strips")]
    tiled = cpu.block_sparse_attention_cpu(q, k, v, plan, path="tiled")
    tol = TOL[dtype]
    torch.testing.assert_close(strips[0].float(), tiled[0].float(), atol=tol, rtol=tol)
    torch.testing.assert_close(strips[1], tiled[1], atol=tol, rtol=tol)


def test_strips_need_consecutive_keys():
    plan = gna_plan((12, 12), (3, 3), (1, 1), (2, 2), (4, 4))  # dilation 2: every other position
    assert strip_layout(plan) is None and cpu.prepare(plan, torch.float32).strip_share is None
    with pytest.raises(ValueError, match=r"path='strips' needs .* consecutive positions .* grid \(12, 12\)"):
        cpu.prepare(plan, torch.float32, "strips")


def test_large_keys_run_as_strips_and_small_ones_as_tiles(monkeypatch, no_direct):
    """A call runs as strips when one batch item's keys pass `STRIPS_MIN_BYTES` and the strips gather at most
    `STRIPS_MAX_SHARE` of the tiles' key slots; else tiled."""
    plan = gna_plan((64, 64), (8, 8), (1, 1), (1, 1), (4, 8))
    share = cpu.prepare(plan, torch.float32).strip_share
    assert share is not None and 0 < share <= cpu.STRIPS_MAX_SHARE
    q, k, v = _qkv(1, 4096, 2, 8)  # 256 KB of keys per batch item
    want = cpu.block_sparse_attention_cpu(q, k, v, plan, path="tiled")
    seen_at = {}
    for min_bytes in (256 * 1024, 256 * 1024 + 1):
        monkeypatch.setattr(cpu, "STRIPS_MIN_BYTES", min_bytes)
        with record_paths() as seen:
            got = cpu.block_sparse_attention_cpu(q, k, v, plan)
        seen_at[min_bytes] = seen
        torch.testing.assert_close(got[0], want[0], atol=2e-5, rtol=2e-5)
    assert seen_at == {256 * 1024: ["strips(4x8)"], 256 * 1024 + 1: ["tiled(4x8)"]}
    monkeypatch.setattr(cpu, "STRIPS_MIN_BYTES", 0)
    monkeypatch.setattr(cpu, "STRIPS_MAX_SHARE", share * 0.99)
    with record_paths() as seen:
        cpu.block_sparse_attention_cpu(q, k, v, plan)
    assert seen == ["tiled(4x8)"]


# --- the query tile -------------------------------------------------------------------------------------------


def test_small_windows_get_small_tiles():
    grid = (64, 64)
    small = gna_q_tile(grid, (4, 4), (1, 1), (1, 1), CPU)
    large = gna_q_tile(grid, (40, 40), (1, 1), (1, 1), CPU)
    assert math.prod(small) < math.prod(large) <= math.prod(grid), (small, large)
    assert math.prod(small) < math.prod(default_q_tile(2))
    # the chosen tile does less work than the fixed 16x16 one (its tile bound is higher)
    chosen = gna_plan(grid, (4, 4), (1, 1), (1, 1), small)
    fixed = gna_plan(grid, (4, 4), (1, 1), (1, 1))
    assert chosen.density() < 0.5 * fixed.density()
    assert torch.equal(chosen.dense_mask(), fixed.dense_mask())  # same pattern, other tiles


def test_tile_is_the_cheapest_by_the_model_and_backends_without_a_model_keep_the_default():
    grid, window, stride, dilation = (32, 32), (6, 6), (1, 1), (1, 1)
    chosen = gna_q_tile(grid, window, stride, dilation, CPU)

    def cost(tile):
        p = gna_plan(grid, window, stride, dilation, tile)
        return cpu.tiling_cost(p.axes)

    assert cost(chosen) == cpu.COST.tiled(*_tiling(gna_plan(grid, window, stride, dilation, chosen)))
    assert all(cost(chosen) <= cost((a, b)) for a in (1, 2, 4, 8, 16, 32) for b in (1, 2, 4, 8, 16, 32))
    for backend in (None, get_backend("reference"), get_backend("triton")):
        assert gna_q_tile(grid, window, stride, dilation, backend) == default_q_tile(2)


def _tiling(plan):
    return plan.num_tiles, plan.q_index.shape[1], plan.kv_index.shape[1], plan.num_tokens


def test_calls_that_run_as_strips_get_the_tile_cheapest_as_strips(monkeypatch, no_direct):
    """Where a call's keys are large enough for strips, the tile is chosen by the strips' cost (their gathers do
    not grow with the tile count), and the call runs as strips with that tile."""
    grid, window, stride, dilation = (36, 44), (12, 12), (1, 1), (1, 1)  # a grid no other test caches
    monkeypatch.setattr(cpu, "STRIPS_MIN_BYTES", 36 * 44 * 2 * 8 * 4)  # q [1, 1584, 2, 8] fp32 reaches it
    q, k, v = _qkv(1, 36 * 44, 2, 8)
    item = cpu.batch_item_bytes(q)
    tiled = gna_q_tile(grid, window, stride, dilation, CPU)
    chosen = gna_q_tile(grid, window, stride, dilation, CPU, item)
    sides = itertools.product((1, 2, 4, 8, 16, 36), (1, 2, 4, 8, 16, 44))
    plans = {tile: gna_plan(grid, window, stride, dilation, tile) for tile in sides}
    plan = plans[chosen]
    slots = strip_key_slots(plan.axes)
    assert cpu.tiling_cost(plan.axes, item) == cpu.COST.strips(*_tiling(plan)[:3], slots, plan.num_tokens)
    assert all(cpu.tiling_cost(plan.axes, item) <= cpu.tiling_cost(p.axes, item) for p in plans.values())
    assert chosen != tiled  # here the strips' choice differs from the tiles' (the test would not test it else)
    with record_paths() as seen:
        gna(q, k, v, grid, window, backend="cpu")
    assert seen == [cpu.prepare(plan, torch.float32, "strips").label]
    # a tile below the flash op's query block costs as one of that block
    a = cpu.COST.strips(1, 16, 100, 0, 0) - 16 * cpu.COST.query_s
    assert a == pytest.approx(cpu.COST.strips(1, cpu.FLASH_Q_BLOCK, 100, 0, 0) - cpu.FLASH_Q_BLOCK * cpu.COST.query_s)


def test_gna_runs_the_plan_tiled_for_its_backend(no_direct):
    grid = (24, 24)
    q, k, v = _qkv(1, 576, 2, 8)
    with record_paths() as seen:
        gna(q, k, v, grid, 3, backend="cpu")
        gna(q, k, v, grid, 3, backend="reference")
    plan = gna_plan(grid, (3, 3), (1, 1), (1, 1), gna_q_tile(grid, (3, 3), (1, 1), (1, 1), CPU))
    assert seen == [cpu.prepare(plan, torch.float32).label, "reference"], seen
    assert seen[0].startswith("tiled(") and seen[0] != "tiled(16x16)"


# --- the prepared-plan cache ----------------------------------------------------------------------------------


def test_prepared_plans_are_cached_within_their_bounds():
    plans = [gna_plan((8 + i, 9), (3, 3), (1, 1), (1, 1)) for i in range(6)]
    cache = cpu._PlanCache(max_entries=3, max_bytes=2**30)
    first = cache.get(plans[0], torch.float32)
    assert cache.get(plans[0], torch.float32) is first  # built once
    assert cache.get(plans[0], torch.bfloat16) is not first  # per dtype
    for p in plans[1:]:
        cache.get(p, torch.float32)
    assert len(cache) == 3
    assert cache.get(plans[0], torch.float32) is not first  # evicted, least recently used first
    one = cache.get(plans[5], torch.float32).nbytes
    small = cpu._PlanCache(max_entries=100, max_bytes=2 * one)
    for p in plans:
        small.get(p, torch.float32)
    assert 1 <= len(small) <= 2 and small.nbytes <= 2 * one
    assert cpu.PLANS.max_entries <= 64 and cpu.PLANS.max_bytes <= 256 * 2**20  # the process-wide cache is bounded


def test_tiled_chunks_are_built_once_and_cover_every_slot_of_every_batch_item():
    grid, batch = (20, 23), 3
    cp = cpu.prepare(gna_plan(grid, (5, 7), (1, 2), (1, 1), (4, 8)), torch.float32, "tiled")
    n, tq, r = cp.num_tokens, cp.q_len, cp.kv_len
    cache = cpu._ChunkCache(max_entries=2, max_bytes=2**30)
    chunks = cache.get(cp, batch, n, 3)
    assert cache.get(cp, batch, n, 3) is chunks and cache.get(cp, batch, n, 4) is not chunks
    assert len(chunks) == 3 and sum(c.tiles for c in chunks) == cp.num_tiles
    # b-major within a chunk: batch item i reads rows i * N + token, and padded slots write the scratch row
    q_rows, kv_rows, dest = (x.view(cp.num_tiles, -1) for x in (cp.q_rows, cp.kv_rows, cp.dest))
    t0 = 0
    for c in chunks:
        tiles = slice(t0, t0 + c.tiles)
        for i in range(batch):
            got = (x.view(batch, -1)[i].view(c.tiles, -1) for x in (c.q_index, c.kv_index, c.dest))
            assert torch.equal(next(got), q_rows[tiles] + i * n)
            assert torch.equal(next(got), kv_rows[tiles] + i * n)
            assert torch.equal(next(got), torch.where(dest[tiles] == n, batch * n, dest[tiles] + i * n))
        mask = c.mask.expand(batch * c.tiles, 1, tq, r)
        assert torch.equal(mask, cp.chunk_mask(t0, t0 + c.tiles, batch).expand_as(mask))
        t0 += c.tiles
    cache.get(cp, 1, n, 3)
    assert len(cache) == 2 and cache.get(cp, batch, n, 3) is not chunks  # evicted, least recently used first
    small = cpu._ChunkCache(max_entries=100, max_bytes=1)
    for pieces in (1, 2, 3):
        small.get(cp, batch, n, pieces)
    assert len(small) == 1  # over its bytes, it keeps the newest only
    assert cpu.CHUNKS.max_entries <= 64 and cpu.CHUNKS.max_bytes <= 128 * 2**20


# --- worker threads -------------------------------------------------------------------------------------------


def _with_threads(n: int, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("path", ["tiled", "strips"])
def test_results_do_not_depend_on_threads_or_chunks(monkeypatch, path):
    grid = (20, 23)
    plan = gna_plan(grid, (5, 7), (1, 2), (1, 1), (4, 8))
    q, k, v = _qkv(3, 460, 2, 16)
    inline = _with_threads(1, lambda: cpu.block_sparse_attention_cpu(q, k, v, plan, path=path))
    inline_omp = _with_threads(2, lambda: cpu.block_sparse_attention_cpu(q, k, v, plan, path=path, workers=1))
    monkeypatch.setattr(cpu, "MIN_CHUNK_S", 1e-9)  # as many chunks as allowed
    chunked = _with_threads(2, lambda: cpu.block_sparse_attention_cpu(q, k, v, plan, path=path, workers=2))
    monkeypatch.setattr(cpu, "CHUNK_BYTES", 1)  # one tile per chunk
    monkeypatch.setattr(cpu, "STRIP_PIECE_BYTES", 1)  # one tile per piece of a run
    per_tile = _with_threads(3, lambda: cpu.block_sparse_attention_cpu(q, k, v, plan, path=path, workers=3))
    for got in (inline_omp, chunked, per_tile):
        assert torch.equal(got[0], inline[0]) and torch.equal(got[1], inline[1])
    ref, ref_lse = reference_attention(q, k, v, plan.dense_mask())
    torch.testing.assert_close(inline[0], ref, atol=2e-5, rtol=2e-5)


def test_workers_leave_every_other_threads_count_alone(monkeypatch):
    monkeypatch.setattr(cpu, "MIN_CHUNK_S", 1e-9)
    plan = gna_plan((16, 16), (3, 3), (1, 1), (1, 1), (4, 4))
    q, k, v = _qkv(2, 256, 2, 8)
    monkeypatch.setattr(cpu, "WORKERS", cpu._Workers())  # a fresh pool: its workers start during this call
    before = torch.get_num_threads()
    _with_threads(2, lambda: cpu.block_sparse_attention_cpu(q, k, v, plan, path="tiled", workers=2))
    assert torch.get_num_threads() == before
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # starts at the process default
    thread.start()
    thread.join()
    assert seen == [before]
    counts = list(cpu.WORKERS.executor(2).map(lambda _: torch.get_num_threads(), range(4)))
    assert set(counts) == {1}
    if sys.platform == "linux" and "OpenMP" in torch.__config__.parallel_info():
        assert cpu._omp_set_num_threads() is not None  # the thread-local setter, not the fallback


def test_workers_run_one_mkl_thread_after_an_explicit_set_num_threads(monkeypatch):
    """torch copies an explicit ``torch.set_num_threads(n)`` into each new thread's MKL-local count; workers left
    at n oversubscribed the cores (4.8x slower chunks, measured): each worker sets its own back to 1."""
    setter = cpu._mkl_set_num_threads_local()
    if setter is None:
        pytest.skip("torch has no MKL here")
    import ctypes
    from pathlib import Path

    lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    monkeypatch.setattr(cpu, "WORKERS", cpu._Workers())

    def counts() -> set[int]:
        pool = cpu.WORKERS.executor(2)
        return set(pool.map(lambda _: (lib.MKL_Get_Max_Threads(), torch.get_num_threads()), range(4)))

    assert _with_threads(2, counts) == {(1, 1)}


def test_workers_follow_inference_mode_and_autograd_runs_inline(monkeypatch):
    monkeypatch.setattr(cpu, "MIN_CHUNK_S", 1e-9)
    plan = gna_plan((12, 12), (3, 3), (1, 1), (1, 1), (4, 4))
    q, k, v = _qkv(2, 144, 2, 8)
    want = cpu.block_sparse_attention_cpu(q, k, v, plan)[0]
    with torch.inference_mode():
        got = _with_threads(2, lambda: cpu.block_sparse_attention_cpu(q, k, v, plan)[0])
    assert torch.equal(got, want)
    qg = q.clone().requires_grad_(True)
    out = _with_threads(2, lambda: cpu.block_sparse_attention_cpu(qg, k, v, plan)[0])
    out.sum().backward()  # recorded on the calling thread
    assert qg.grad is not None and torch.isfinite(qg.grad).all()
    torch.testing.assert_close(out.detach(), want)


def test_scheduler_runs_quiet_calls_inline_and_contended_calls_on_more_workers(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(cpu.time, "monotonic", lambda: clock[0])
    sched = cpu.Scheduler(contended_share=0.8, hold_s=2.0, strikes=2)
    small, large = 1e-3, cpu.INLINE_MAX_S * 2
    assert sched.mode(small, 1) == "inline"  # one thread allowed: always inline
    assert sched.mode(small, 2) == "inline"  # quiet and small: the caller's own threads
    assert sched.mode(large, 2) == "workers"  # large calls: always the workers
    sched.record(wall_s=1.0, cpu_s=0.5)  # one low share alone is not contention
    assert sched.mode(small, 2) == "inline"
    sched.record(wall_s=1.0, cpu_s=0.99)  # and a quiet call resets the count
    sched.record(wall_s=1.0, cpu_s=0.5)
    assert sched.mode(small, 2) == "inline"
    sched.record(wall_s=1.0, cpu_s=0.45)  # two in a row: contended for hold_s, large calls too
    assert sched.contended == 1 and sched.mode(small, 2) == sched.mode(large, 2) == "contended"
    clock[0] += 1.9
    assert sched.mode(small, 2) == "contended"
    clock[0] += 0.2  # the hold is over: each call in its quiet mode again, measuring
    assert sched.mode(small, 2) == "inline" and sched.mode(large, 2) == "workers"
    sched.record(wall_s=1.0, cpu_s=0.5)  # still contended: one probe suffices, the hold doubles
    assert sched.contended == 2 and sched.mode(small, 2) == "contended"
    clock[0] += 3.9
    assert sched.mode(small, 2) == "contended"
    clock[0] += 0.2
    assert sched.mode(small, 2) == "inline"
    sched.record(wall_s=1.0, cpu_s=1.0)  # quiet again: inline, and the next hold is back at 2 s
    sched.record(wall_s=1.0, cpu_s=0.5)
    assert sched.mode(small, 2) == "inline"
    sched.record(wall_s=1.0, cpu_s=0.5)
    clock[0] += 2.1
    assert sched.contended == 3 and sched.mode(small, 2) == "inline"
    with pytest.raises(ValueError, match="contended_share"):
        cpu.Scheduler(contended_share=0.0)
    with pytest.raises(ValueError, match=r"oversubscribe >= 1; got .* 0"):
        cpu.Scheduler(oversubscribe=0)
    ran: list[int] = []
    sched = cpu.Scheduler(strikes=2)  # fresh: these calls' own (tiny) measurements give at most one strike
    sched.run(ran.append, small, 2, forced=True)
    sched.run(ran.append, large, 2)
    sched.run(ran.append, small, 2)
    assert ran == [2, 2, 1]
    sched.record(wall_s=1.0, cpu_s=0.5)
    sched.record(wall_s=1.0, cpu_s=0.5)
    sched.run(ran.append, small, 2)
    sched.run(ran.append, large, 2)
    sched.run(ran.append, small, 2, forced=True)
    assert ran == [2, 2, 1, 4, 4, 2]  # contended: twice the threads, except when forced
    teamed: list[str] = []
    sched.run(ran.append, small, 2, team=lambda: teamed.append("team"))  # contended, and the call offers one
    sched.run(ran.append, small, 2, forced=True, team=lambda: teamed.append("forced"))
    assert ran[-1:] == [2] and teamed == ["team"]
    quiet = cpu.Scheduler(strikes=2)
    quiet.run(ran.append, small, 2, team=lambda: teamed.append("quiet"))
    assert ran[-1] == 1 and teamed == ["team"]  # quiet: inline, the team path is for contended calls only


@pytest.mark.parametrize("small", [True, False], ids=["team", "workers"])
def test_a_small_contended_call_runs_its_flash_op_on_the_callers_team(monkeypatch, small):
    """While contended, a tiled call modelled at most `TEAM_MAX_S` runs as one chunk whose flash op runs on the
    caller's OpenMP threads (its gathers on one), larger ones in chunks on the workers: the same bits."""
    grid = (20, 23)
    plan = gna_plan(grid, (5, 7), (1, 2), (1, 1), (4, 8))
    q, k, v = _qkv(3, 460, 2, 16)
    expected = _with_threads(1, lambda: cpu.block_sparse_attention_cpu(q, k, v, plan, path="tiled"))
    sched = cpu.Scheduler()
    sched._contended_until = float("inf")  # as after two measured calls that lost the cores
    monkeypatch.setattr(cpu, "SCHEDULER", sched)
    monkeypatch.setattr(cpu, "TEAM_MAX_S", 1.0 if small else 0.0)
    monkeypatch.setattr(cpu, "MIN_CHUNK_S", 1e-9)  # the workers' way: many chunks
    flash_threads: list[int] = []
    flash = cpu.sdpa_with_lse

    def spy(*args, **kwargs):
        flash_threads.append(torch.get_num_threads())
        return flash(*args, **kwargs)

    monkeypatch.setattr(cpu, "sdpa_with_lse", spy)
    got = _with_threads(2, lambda: cpu.block_sparse_attention_cpu(q, k, v, plan, path="tiled"))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    if small:
        assert flash_threads == [2]  # one flash call, on the caller's two threads
    else:
        assert len(flash_threads) > 1
        if cpu._omp_set_num_threads() is not None:
            assert set(flash_threads) == {1}


def test_the_caller_takes_chunks_beside_the_workers_on_one_intraop_thread():
    """`run_parallel` runs ranges on the calling thread too (on one intra-op thread, its count back after)
    and on the workers; every range exactly once."""
    before = torch.get_num_threads()
    caller = threading.get_ident()
    seen: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def fn(a: int, b: int) -> None:
        with lock:
            seen.append((a, threading.get_ident(), torch.get_num_threads()))
        barrier.wait(timeout=10)  # the first two ranges run at the same time, on two threads

    barrier = threading.Barrier(2)
    _with_threads(2, lambda: cpu.run_parallel(fn, [(i, i + 1) for i in range(6)], 2))
    assert sorted(a for a, _, _ in seen) == list(range(6))
    threads = {t for _, t, _ in seen}
    assert caller in threads and len(threads) == 2
    if cpu._omp_set_num_threads() is not None:
        assert {n for _, _, n in seen} == {1}
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("cost", [1e-3, cpu.INLINE_MAX_S * 2], ids=["inline", "workers"])
def test_scheduler_measures_calls_in_their_quiet_modes(cost):
    """A call whose caller thread slept (as a descheduled one would) counts against the machine, inline or
    on the workers."""
    import time as _time

    sched = cpu.Scheduler(strikes=1)
    sched.run(lambda threads: _time.sleep(0.02), cost, 2)
    assert sched.contended == 1 and sched.mode(cost, 2) == "contended"
    busy = cpu.Scheduler(strikes=1)
    busy.run(lambda threads: sum(range(300_000)), cost, 2)  # the caller's thread busy the whole call
    assert busy.contended == 0


def test_gathers_reuse_the_threads_workspace():
    rows = torch.randn(100, 6)  # [B * S, C]
    index = torch.tensor([3, 3, 0, 99, 57])
    a = cpu._gather(rows, index, 0, reuse=True)
    assert torch.equal(a, rows.index_select(0, index))
    ptr = a.data_ptr()
    b = cpu._gather(rows, index[:2], 0, reuse=True)  # smaller: the same buffer
    assert torch.equal(b, rows.index_select(0, index[:2])) and b.data_ptr() == ptr
    other = cpu._gather(rows, index, 1, reuse=True)  # another slot: another buffer
    assert other.data_ptr() != ptr
    half = cpu._gather(rows.half(), index, 0, reuse=True)  # another dtype: reallocated, right values
    assert half.dtype == torch.float16 and torch.equal(half, rows.half().index_select(0, index))
    fresh = cpu._gather(rows, index, 0, reuse=False)
    assert torch.equal(fresh, rows.index_select(0, index))
    assert fresh.data_ptr() != cpu._gather(rows, index, 0, reuse=True).data_ptr()


def test_a_query_with_no_key_gets_zero_and_minus_inf():
    """A generic plan whose mask leaves one real query without keys: out 0, lse -inf (the flash op says lse 0)."""
    rows = torch.ones(3, 4, dtype=torch.bool)
    rows[1] = False
    axis = AxisTiling.from_lists(6, [([0, 1, 2], [0, 1, 2, 3], rows), ([3, 4, 5], [2, 3, 4, 5], None)])
    plan = BlockPlan.from_axes((axis,))
    q, k, v = _qkv(2, 6, 2, 8)
    for path in ("tiled", "strips", "masked-sdpa"):
        out, lse = cpu.block_sparse_attention_cpu(q, k, v, plan, path=path)
        ref, ref_lse = reference_attention(q, k, v, plan.dense_mask())
        assert torch.isneginf(lse[:, 1]).all() and (out[:, 1] == 0).all(), path
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(lse, ref_lse, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"path='direct' needs every query's keys as runs"):
        cpu.block_sparse_attention_cpu(q, k, v, plan, path="direct")


# --- issue 23 section 4: no silent wrong result ----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [3, 20], ids=["window3", "covering"])
def test_all_false_text_mask_of_one_batch_item(backend, window):
    """Batch item 0 has no valid text token: its queries attend their window only, as the reference says."""
    grid = (6, 7)
    plan = gna_plan(grid, *GNAConfig(window=window).resolve(grid))
    q, k, v = _qkv(2, 42, 2, 16, seed=3)
    ek, ev = randn(2, 5, 2, 16, seed=7), randn(2, 5, 2, 16, seed=8)
    valid = torch.tensor([[False] * 5, [True, True, False, True, False]])
    out, lse = _sparse(backend, q, k, v, plan, extra_k=ek, extra_v=ev, extra_mask=valid)
    ref, ref_lse = reference_attention(q, k, v, plan.dense_mask(), extra_k=ek, extra_v=ev, extra_mask=valid)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_extra_keys_alone_with_an_all_false_mask_are_empty(backend):
    q = randn(2, 9, 2, 8)
    ek, ev = randn(2, 4, 2, 8, seed=1), randn(2, 4, 2, 8, seed=2)
    valid = torch.tensor([[False] * 4, [True] * 4])
    out, lse = attend_extra(q, ek, ev, valid, None, backend)
    assert torch.isneginf(lse[0]).all() and (out[0] == 0).all()
    assert torch.isfinite(lse[1]).all()


def _attends(mask: torch.Tensor, token: int, where: str) -> torch.Tensor:
    """Query rows whose result depends on ``token`` being in q (its own row) or in k / v (its attenders)."""
    return torch.arange(mask.shape[0]) == token if where == "q" else mask[:, token]


@pytest.mark.parametrize("backend", [*BACKENDS, "cpu-strips"])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_nan_inputs_are_never_removed_and_the_backends_agree(backend, where):
    """Every query that attends a NaN token gets NaN, on every backend; every query that does not and is
    finite equals the clean result (rows of the same tile, or of a tile whose strip key box holds the token,
    may turn NaN too: allowed, never a wrong number)."""
    grid = (8, 8)
    plan = gna_plan(grid, (3, 3), (1, 1), (1, 1))
    mask = plan.dense_mask()
    qkv = list(_qkv(1, 64, 2, 16, seed=5))
    token = 27
    clean, _ = reference_attention(*qkv, mask)
    qkv["qkv".index(where)][0, token, 0, 0] = float("nan")
    out, lse = _sparse(backend, *qkv, plan)
    hit = _attends(mask, token, where)
    assert torch.isnan(out[0, hit, 0]).any(-1).all(), (backend, where)
    if where != "v":
        assert torch.isnan(lse[0, hit, 0]).all()
    finite = ~torch.isnan(out[0, :, 0]).any(-1)
    torch.testing.assert_close(out[0, finite], clean[0, finite], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(out[0, :, 1], clean[0, :, 1], atol=2e-5, rtol=2e-5)  # the other head is clean


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_nan_in_a_text_key_reaches_the_output_through_the_merge(backend):
    grid = (5, 5)
    plan = gna_plan(grid, (3, 3), (1, 1), (1, 1))
    q, k, v = _qkv(1, 25, 1, 8)
    ek, ev = randn(1, 3, 1, 8, seed=9), randn(1, 3, 1, 8, seed=10)
    ek[0, 1, 0, 0] = float("nan")
    out = block_sparse_attention(q, k, v, plan, extra_k=ek, extra_v=ev, backend=backend)
    assert torch.isnan(out).all()  # every query attends every text key


@pytest.mark.parametrize("where", ["gna", "block_sparse", "extra", "reference"])
def test_float_masks_are_refused_not_inverted(where):
    grid = (4, 5)
    q, k, v = _qkv(2, 20, 2, 8)
    ek, ev = randn(2, 3, 2, 8, seed=4), randn(2, 3, 2, 8, seed=5)
    additive = torch.tensor([[0.0, float("-inf"), 0.0], [0.0, 0.0, float("-inf")]])  # SDPA style: 0 = attend
    plan = gna_plan(grid, (3, 3), (1, 1), (1, 1))
    calls = {
        "gna": lambda: gna(q, k, v, grid, 3, extra_k=ek, extra_v=ev, extra_mask=additive),
        "block_sparse": lambda: block_sparse_attention(q, k, v, plan, extra_k=ek, extra_v=ev, extra_mask=additive),
        "extra": lambda: attend_extra(q, ek, ev, additive, None, "cpu"),
        "reference": lambda: reference_attention(q, k, v, extra_k=ek, extra_v=ev, extra_mask=additive),
    }
    with pytest.raises(TypeError, match=r"extra_mask must be a bool mask \(True = attend\), got dtype torch.float32"):
        calls[where]()
    # the bool mask it meant is accepted
    out = gna(q, k, v, grid, 3, extra_k=ek, extra_v=ev, extra_mask=additive == 0)
    ref, _ = reference_attention(q, k, v, gna_mask(grid, (3, 3), (1, 1), (1, 1)), extra_k=ek, extra_v=ev,
                                 extra_mask=additive == 0)  # fmt: skip
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text", [0, 3], ids=["no-text", "text"])
def test_batch_size_zero(backend, text):
    grid = (4, 6)
    q, k, v = _qkv(0, 24, 2, 8)
    ek = ev = randn(0, text, 2, 8) if text else None
    if backend == "triton":
        out, lse = _sparse(backend, q, k, v, gna_plan(grid, (3, 3), (1, 1), (1, 1)), extra_k=ek, extra_v=ev)
    else:
        out, lse = gna(q, k, v, grid, 3, extra_k=ek, extra_v=ev, backend=backend, return_lse=True)
    assert out.shape == (0, 24, 2, 8) and lse.shape == (0, 24, 2)
