"""The CPU direct path (`diffattn.kernels.cpu_direct`): it builds here, its runs are exactly the plan's keys, it
agrees with the reference (and the other paths where the engine switches to it) over shapes, head dims and run
lengths that exercise each of its code paths, it is bit-identical however its queries are split over threads,
and it steps aside, loudly where forced, for autograd, non-fp32 dtypes, plans it cannot run and machines where
it cannot be built."""

from __future__ import annotations

import math
import os
import shutil
import warnings

import pytest
import torch

import diffattn.kernels.cpu as cpu
from diffattn.functional import gna
from diffattn.kernels import cpu_direct, get_backend, record_paths, reference_attention
from diffattn.methods.gna import GNAConfig, gna_plan, gna_q_tile
from diffattn.methods.naive import gna_mask

from ..helpers import randn, random_qkv

CPU = get_backend("cpu")
TOL = 2e-5


def _resolved(grid, window, stride=1, dilation=1):
    return GNAConfig(window=window, stride=stride, dilation=dilation).resolve(tuple(grid))


def _id(case) -> str:
    """``g32x32-w8x8`` (grid, window and, when given, stride and dilation)."""
    return "-".join(key + "x".join(map(str, t)) for key, t in zip("gwsd", case))


def test_the_direct_kernel_builds_here():
    """CI has a C++ compiler: the kernel must build there (elsewhere the engine falls back, tested below)."""
    if cpu_direct.library() is None and not os.environ.get("CI") and shutil.which("c++") is None:
        pytest.skip("no C++ compiler on this machine")
    assert cpu_direct.library() is not None


# --- the runs ---------------------------------------------------------------------------------------------------

RUN_CASES = [  # (grid, window, stride, dilation): 1-, 2- and 3-D, sizes off the tiles, clamped windows
    ((40,), (9,), (1,), (1,)),
    ((13, 17), (5, 7), (1, 1), (1, 1)),
    ((12, 20), (4, 8), (2, 4), (1, 1)),
    ((32, 32), (8, 8), (1, 1), (1, 1)),
    ((16, 16), (5, 5), (1, 1), (2, 1)),  # dilation on a leading axis: runs still hold
    ((11, 11), (11, 11), (1, 1), (1, 1)),
    ((6, 10, 9), (3, 5, 4), (1, 2, 1), (1, 1, 1)),
    ((5, 7, 33), (2, 3, 17), (1, 1, 1), (1, 1, 1)),
]


@pytest.mark.parametrize("case", RUN_CASES, ids=_id)
def test_key_runs_are_exactly_the_plans_keys(case):
    grid, window, stride, dilation = case
    plan = gna_plan(grid, window, stride, dilation)
    found = cpu_direct.key_runs(plan)
    assert found is not None
    runs, run_len = found
    n = plan.num_tokens
    assert runs.dtype == torch.int32 and runs.shape[0] == n and run_len == window[-1]
    keys = (runs.long()[:, :, None] + torch.arange(run_len)).reshape(n, -1)
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[torch.arange(n)[:, None], keys] = True
    assert mask.sum() == keys.numel()  # no key twice
    assert torch.equal(mask, gna_mask(grid, window, stride, dilation))


def test_dilation_on_the_last_axis_has_no_runs():
    plan = gna_plan((16, 16), (5, 5), (1, 1), (1, 2))
    assert cpu_direct.key_runs(plan) is None
    with pytest.raises(ValueError, match=r"path='direct' needs every query's keys as runs .* grid \(16, 16\)"):
        cpu.prepare(plan, torch.float32, "direct")


# --- agreement ---------------------------------------------------------------------------------------------------

# run lengths for each of the kernel's score loops: 8 in pairs (an even number of runs), 8 alone (1-D), 16 (one
# full vector), 17 (a full one and one lane), 5 (one short vector); 4-chunk groups and the single-chunk tail
KERNEL_CASES = [
    ((32, 32), (8, 8)),
    ((24, 20), (7, 8)),  # an odd number of runs of 8
    ((64,), (8,)),
    ((20, 24), (3, 16)),
    ((9, 40), (2, 17)),
    ((13, 11), (5, 5)),
    ((4, 6, 10), (3, 3, 8)),
]
HEAD_DIMS = [8, 32, 40, 64, 144]  # one vector, two, not a multiple of 16, four, above the unrolled sizes


@pytest.mark.parametrize("head_dim", HEAD_DIMS, ids=lambda d: f"d{d}")
@pytest.mark.parametrize("case", KERNEL_CASES, ids=_id)
def test_direct_matches_the_reference(case, head_dim):
    grid, window = case
    resolved = _resolved(grid, window)
    plan = gna_plan(grid, *resolved)
    q, k, v = random_qkv(math.prod(grid), seed=head_dim, batch=2, heads=3, dim=head_dim)
    out, lse = cpu.block_sparse_attention_cpu(q, k, v, plan, path="direct")
    ref, ref_lse = reference_attention(q, k, v, gna_mask(grid, *resolved))
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)
    torch.testing.assert_close(lse, ref_lse, atol=TOL, rtol=TOL)


def test_direct_with_text_keys_and_a_padding_mask():
    """Text keys merge with the direct path's partial through its lse, as with the other paths."""
    grid = (32, 32)
    q, k, v = random_qkv(1024, seed=5, batch=2, heads=2, dim=32)
    ek, ev = randn(2, 6, 2, 32, seed=11), randn(2, 6, 2, 32, seed=12)
    valid = torch.tensor([[True] * 6, [True, False, True, True, False, False]])
    with record_paths() as seen:
        out, lse = gna(q, k, v, grid, 8, extra_k=ek, extra_v=ev, extra_mask=valid, backend="cpu", return_lse=True)
    assert seen == ["direct(8x8)"]
    ref, ref_lse = reference_attention(q, k, v, gna_mask(grid, *_resolved(grid, 8)), extra_k=ek, extra_v=ev,
                                       extra_mask=valid)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL)
    torch.testing.assert_close(lse, ref_lse, atol=TOL, rtol=TOL)


def _direct_switch_cases() -> list[tuple]:
    """(grid, window) on both sides of every place where a call (B 2, 4 heads of 32, fp32) switches to or from
    the direct path as the grid grows."""
    cases = []
    for make, window in ((lambda n: (n, n), (5, 5)), (lambda n: (n, n + 3), (8, 8)), (lambda n: (6 * n,), (7,))):
        before = None
        for n in range(2, 33):
            grid = make(n)
            resolved = _resolved(grid, window)
            q = torch.empty(2, math.prod(grid), 4, 32)
            plan = gna_plan(grid, *resolved, gna_q_tile(grid, *resolved, CPU, cpu.batch_item_bytes(q)))
            path = cpu.prepare_call(plan, q).path
            if before is not None and (path == "direct") != (before[1] == "direct"):
                cases += [c for c in (before[0], (grid, window)) if c not in cases]
            before = ((grid, window), path)
    return cases


SWITCH_CASES = _direct_switch_cases()


def test_calls_switch_to_the_direct_path_as_grids_grow():
    assert len(SWITCH_CASES) >= 4, SWITCH_CASES


@pytest.mark.parametrize("case", SWITCH_CASES, ids=_id)
def test_every_path_agrees_where_calls_switch_to_direct(case):
    grid, window = case
    resolved = _resolved(grid, window)
    plan = gna_plan(grid, *resolved, gna_q_tile(grid, *resolved, CPU))
    q, k, v = random_qkv(math.prod(grid), seed=math.prod(grid), batch=2, heads=4, dim=32)
    ref, ref_lse = reference_attention(q, k, v, gna_mask(grid, *resolved))
    paths = ["direct", "tiled"] + (["masked-sdpa"] if plan.num_tokens <= cpu.MASKED_SDPA_MAX_TOKENS else [])
    for path in paths:
        out, lse = cpu.block_sparse_attention_cpu(q, k, v, plan, path=path)
        torch.testing.assert_close(out, ref, atol=TOL, rtol=TOL, msg=path)
        torch.testing.assert_close(lse, ref_lse, atol=TOL, rtol=TOL, msg=path)


def test_queries_split_over_threads_give_the_same_bits():
    grid = (40, 40)
    plan = gna_plan(grid, *_resolved(grid, 8))
    q, k, v = random_qkv(1600, seed=3, batch=2, heads=4, dim=32)
    one, one_lse = cpu.block_sparse_attention_cpu(q, k, v, plan, path="direct", workers=1)
    for workers in (2, 3):
        out, lse = cpu.block_sparse_attention_cpu(q, k, v, plan, path="direct", workers=workers)
        assert torch.equal(out, one) and torch.equal(lse, one_lse), workers


def test_a_nan_key_reaches_only_the_queries_that_attend_it():
    grid = (16, 16)
    resolved = _resolved(grid, 5)
    plan = gna_plan(grid, *resolved)
    q, k, v = random_qkv(256, seed=9, batch=1, heads=2, dim=16)
    k[0, 0, 0, 3] = float("nan")
    out, _ = cpu.block_sparse_attention_cpu(q, k, v, plan, path="direct")
    sees = gna_mask(grid, *resolved)[:, 0]  # queries whose window holds token 0
    assert out[0, sees, 0].isnan().all() and not out[0, ~sees, 0].isnan().any()
    assert not out[0, :, 1].isnan().any()  # head 1's keys are finite


# --- when it is not used ------------------------------------------------------------------------------------------


def test_the_engine_takes_direct_where_it_is_modelled_cheaper():
    q = torch.empty(2, 1024, 4, 32)
    plan = gna_plan((32, 32), *_resolved((32, 32), 8), gna_q_tile((32, 32), *_resolved((32, 32), 8), CPU))
    assert cpu.prepare_call(plan, q).path == "direct"
    # 128x128 tokens, window 32, 8 heads of 64 (scripts/speedup.py): strips, measured 556 ms against 902 direct
    grid, resolved = (128, 128), _resolved((128, 128), 32)
    q = torch.empty(1, 16384, 8, 64)
    plan = gna_plan(grid, *resolved, gna_q_tile(grid, *resolved, CPU, cpu.batch_item_bytes(q)))
    assert cpu.prepare_call(plan, q).path == "strips"


def test_autograd_and_other_dtypes_take_the_tiled_path():
    grid = (32, 32)
    plan = gna_plan(grid, *_resolved(grid, 8))
    q, k, v = random_qkv(1024, batch=1, heads=2, dim=32)
    q.requires_grad_()
    with record_paths() as seen:
        out, _ = cpu.block_sparse_attention_cpu(q, k, v, plan)
    assert seen[0].startswith("tiled(")
    out.sum().backward()
    assert q.grad is not None and q.grad.isfinite().all()
    with pytest.raises(ValueError, match=r"path='direct' runs inference only"):
        cpu.block_sparse_attention_cpu(q, k, v, plan, path="direct")
    qb, kb, vb = (t.detach().bfloat16() for t in (q, k, v))
    with record_paths() as seen:
        cpu.block_sparse_attention_cpu(qb, kb, vb, plan)
    assert not seen[0].startswith("direct")
    with pytest.raises(ValueError, match=r"path='direct' runs fp32 only, got torch.bfloat16"):
        cpu.block_sparse_attention_cpu(qb, kb, vb, plan, path="direct")


def test_without_the_kernel_the_engine_runs_tiled(monkeypatch):
    monkeypatch.setattr(cpu_direct, "library", lambda: None)
    grid = (32, 32)
    plan = gna_plan(grid, *_resolved(grid, 8))
    q, k, v = random_qkv(1024, batch=1, heads=2, dim=32)
    with record_paths() as seen:
        cpu.block_sparse_attention_cpu(q, k, v, plan)
    assert seen[0].startswith("tiled(")
    with pytest.raises(ValueError, match=r"path='direct' needs the CPU direct kernel, which could not be built"):
        cpu.block_sparse_attention_cpu(q, k, v, plan, path="direct")


def test_a_failed_build_warns_with_its_reason(monkeypatch):
    def fail(native: bool, openmp: bool) -> None:
        raise RuntimeError(f"Error building extension: no compiler (native={native}, openmp={openmp})")

    monkeypatch.setattr(cpu_direct, "_build", fail)
    with pytest.warns(RuntimeWarning, match=r"could not be built, so the CPU backend uses its tiled path .*"
                                            r"no compiler \(native=False, openmp=False\)"):
        assert cpu_direct.library.__wrapped__() is None


def test_the_kernel_refuses_what_it_cannot_read():
    ops = cpu_direct.library()
    if ops is None:
        pytest.skip("no direct kernel here")
    q, k, v = random_qkv(64, batch=1, heads=2, dim=8)
    runs, run_len = cpu_direct.key_runs(gna_plan((8, 8), *_resolved((8, 8), 3)))
    kt = ops.transpose_keys(k, 8)
    out, lse = torch.empty_like(q), torch.empty(1, 64, 2)
    with pytest.raises(RuntimeError, match="float32"):
        ops.attend(q.double(), kt, v, runs, run_len, 0.3, 0, 64, out, lse)
    with pytest.raises(RuntimeError, match=r"runs must be int32 \[S, R\]"):
        ops.attend(q, kt, v, runs.long(), run_len, 0.3, 0, 64, out, lse)
    with pytest.raises(RuntimeError, match="query range"):
        ops.attend(q, kt, v, runs, run_len, 0.3, 0, 65, out, lse)
    with pytest.raises(RuntimeError, match="row length 7 does not divide 64"):
        ops.transpose_keys(k, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good call warns about nothing
        ops.attend(q, kt, v, runs, run_len, 0.3, 0, 64, out, lse)
