"""Calibration on attention with known locality: q/k built so that, in some layers, every query attends exactly
(up to e^-40) the tokens of its own block; in others every key equally. Calibration must find the smallest window
covering the blocks for the local layers, leave the global ones dense, and choose per stretch of steps."""

import pytest
import torch

from diffattn.calibration import CalibrationTarget
from diffattn.calibration.probe import Probe, ProbeConfig
from diffattn.calibration.run import build_plan
from diffattn.calibration.select import choose_quality, choose_speed, make_buckets, make_cells, predicted
from diffattn.methods import AttendCall
from diffattn.methods.routed import ModelSignature

GRID = (16, 16)
TIMESTEPS = (900.0, 700.0, 300.0, 100.0)


def _blocked(block: tuple[int, int], seed: int, heads: int = 2, gamma: float = 40.0):
    """q, k, v ``[2, 256, H, D]``: scores gamma within a block of ``block`` tokens, 0 across blocks."""
    rows, cols = torch.meshgrid(torch.arange(GRID[0]), torch.arange(GRID[1]), indexing="ij")
    ids = ((rows // block[0]) * (GRID[1] // block[1]) + cols // block[1]).flatten()
    onehot = torch.nn.functional.one_hot(ids).float()  # [N, blocks]
    q = (gamma * onehot)[None, :, None].expand(2, -1, heads, -1).contiguous()
    k = onehot[None, :, None].expand(2, -1, heads, -1).contiguous()
    v = torch.randn(2, ids.numel(), heads, onehot.shape[1], generator=torch.Generator().manual_seed(seed))
    return q, k, v


def _global(seed: int):
    q, k, v = _blocked((4, 4), seed)
    return torch.zeros_like(q), k, v  # q = 0: every key gets the same weight


def _layers(t: float, i: int):
    """(layer, q, k, v) of one step: square blocks, row strips, global, and a layer global early, local late."""
    yield "local", *_blocked((4, 4), i)
    yield "strips", *_blocked((2, 16), i)
    yield "global", *_global(i)
    yield "late", *(_blocked((4, 4), i) if t < 500 else _global(i))


@pytest.fixture(scope="module")
def probe():
    p = Probe(ProbeConfig(queries=48, rows=2, seed=0))
    for i, t in enumerate(TIMESTEPS):
        for layer, q, k, v in _layers(t, i):
            out = p.attend(q, k, v, AttendCall(grid=GRID, layer=layer, timestep=t, scale=1.0))
            assert out.shape == q.shape  # the probe returns dense attention
    return p


def _choice(cells, chosen):
    return {(c.module, c.bucket): None if o.candidate is None else dict(o.candidate.knobs)["window"]
            for c, o in zip(cells, chosen)}  # fmt: skip


def test_finds_the_windows_of_local_layers_and_leaves_global_ones_dense(probe):
    buckets, groups = make_buckets(probe.timesteps(), 2)
    assert [b.timesteps for b in buckets] == [(900.0, 700.0), (300.0, 100.0)]
    cells = make_cells(probe.records, groups, "flop")
    choice = _choice(cells, choose_quality(cells, CalibrationTarget(max_attn_error=0.01)))
    # a 4x4 block is covered for every query by a sliding window of 7; the ladder's next is 8
    assert choice[("local", 0)] == choice[("local", 1)] == (8, 8)
    # 2x16 strips: 3 rows (GNA's window of 3 starts one row above) and every column
    assert choice[("strips", 0)] == choice[("strips", 1)] == (3, 16)
    assert choice[("global", 0)] is None and choice[("global", 1)] is None
    assert choice[("late", 0)] is None and choice[("late", 1)] == (8, 8)
    by = {(c.module, c.bucket): o for c, o in zip(cells, choose_quality(cells, CalibrationTarget(max_attn_error=0.01)))}
    assert by[("local", 0)].error_max < 1e-6 and by[("local", 0)].mass_min > 1 - 1e-6
    assert by[("local", 0)].bound == pytest.approx(256 / 64)


def test_kept_mass_target_finds_the_same_windows(probe):
    buckets, groups = make_buckets(probe.timesteps(), 2)
    cells = make_cells(probe.records, groups, "flop")
    choice = _choice(cells, choose_quality(cells, CalibrationTarget(min_mass=0.999)))
    assert choice[("local", 1)] == (8, 8) and choice[("strips", 0)] == (3, 16) and choice[("global", 0)] is None


def test_a_speed_target_spends_exact_windows_first(probe):
    buckets, groups = make_buckets(probe.timesteps(), 2)
    cells = make_cells(probe.records, groups, "flop")
    share = 0.5
    exact = choose_quality(cells, CalibrationTarget(max_attn_error=0.01))
    reachable = predicted(cells, exact, share)[1]
    chosen, ok = choose_speed(cells, CalibrationTarget(min_bound=reachable * 0.99), share)
    assert ok and predicted(cells, chosen, share)[1] >= reachable * 0.99
    assert max(o.error_max for o in chosen) < 1e-6  # reached without losing anything
    faster, ok = choose_speed(cells, CalibrationTarget(min_bound=reachable * 1.1), share)
    assert ok and predicted(cells, faster, share)[1] >= reachable * 1.1
    assert max(o.error_max for o in faster) > 0.01  # only lossy choices go beyond
    fastest, ok = choose_speed(cells, CalibrationTarget(min_bound=1 / (1 - share) * 1.01), share)
    assert not ok  # beyond the Amdahl limit: the fastest plan, flagged


def test_the_plan_of_it(probe):
    buckets, groups = make_buckets(probe.timesteps(), 2)
    cells = make_cells(probe.records, groups, "flop")
    chosen = choose_quality(cells, CalibrationTarget(max_attn_error=0.01))
    plan = build_plan((ModelSignature("", "Synthetic", "0" * 16),), cells, chosen, buckets, 0.5)
    assert plan.sparse_modules == ["local", "strips", "late"]
    assert plan.entry("late", 0).method == "dense"
    assert plan.entry("late", 1).knobs == (("stride", 1), ("window", (8, 8)))
    assert plan.bucket_of(950.0) == 0 and plan.bucket_of(499.0) == 1 and plan.bucket_of(550.0) == 0
    assert plan.bucket_of(0.0) == 1
