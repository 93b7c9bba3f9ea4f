"""Calibration's measurements: on sampled queries, the kept mass and output error of every candidate equal those of
the methods' exact oracles (`methods.naive`), with text keys, key padding and odd grids; the candidate ladders."""

import pytest
import torch

from diffattn.calibration.candidates import Candidate, candidates_for, gna_windows, window_ladder
from diffattn.calibration.measure import batch_rows, measure_call, sample_positions
from diffattn.kernels import reference_attention
from diffattn.methods import AttendCall
from diffattn.methods.naive import gna_mask, msw_mask

GRIDS = [(13,), (5, 7), (3, 4, 5)]


def _call(grid, text: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = 1
    for x in grid:
        n *= x
    b, h, d = 3, 2, 8
    q, k, v = (torch.randn(b, n, h, d, generator=g) * 1.5 for _ in range(3))
    extra = {}
    if text:
        mask = torch.ones(b, text, dtype=torch.bool)
        mask[1, -1] = False  # a padded text key
        extra = dict(extra_k=torch.randn(b, text, h, d, generator=g), extra_v=torch.randn(b, text, h, d, generator=g),
                     extra_mask=mask)  # fmt: skip
    return q, k, v, AttendCall(grid=grid, layer="blocks.3.attn1", timestep=321.0, scale=0.4, **extra)


def _oracle_mask(cand: Candidate, grid, call):
    inst = cand.instance
    if cand.method == "gna":
        return gna_mask(grid, *inst.config.resolve(grid))
    return msw_mask(grid, inst.config.resolve_window(grid), inst.shift(call))


@pytest.mark.parametrize("text", [0, 4], ids=["image-only", "joint-text"])
@pytest.mark.parametrize("grid", GRIDS, ids=["1d-13", "2d-5x7", "3d-3x4x5"])
def test_measurements_equal_the_oracles(grid, text):
    q, k, v, call = _call(grid, text)
    cands = candidates_for(grid, ["gna", "msw", "proxy"], blocked=True)
    assert {c.method for c in cands} >= {"gna", "msw"}
    n = q.shape[1]
    positions = sample_positions(n, 9, torch.Generator().manual_seed(1), "cpu")
    rows = [0, 2]
    got = measure_call(q, k, v, call, cands, positions, rows)
    extra = dict(extra_k=call.extra_k, extra_v=call.extra_v, extra_mask=call.extra_mask, scale=call.scale)
    full_o, full_l = reference_attention(q, k, v, **extra)
    pick = (slice(0, 3, 2), positions)
    ref = full_o[pick]
    for i, cand in enumerate(cands):
        out = cand.instance.oracle(q, k, v, call).float()[pick]
        err = ((out - ref).square().sum() / ref.square().sum()).sqrt()
        assert got.error[i] == pytest.approx(float(err), abs=2e-5, rel=1e-4), cand.label
        heads = ((out - ref).square().sum(dim=(0, 1, 3)) / ref.square().sum(dim=(0, 1, 3))).sqrt()
        torch.testing.assert_close(got.head_error[i], heads, atol=2e-5, rtol=1e-4)
        if cand.method == "proxy":
            assert torch.isnan(got.mass[i])
            continue
        _, lse = reference_attention(q, k, v, _oracle_mask(cand, grid, call), **extra)
        mass = torch.exp(lse - full_l)[pick]  # [rows, n, H]
        assert got.mass[i] == pytest.approx(float(mass.mean()), abs=1e-5), cand.label
        torch.testing.assert_close(got.head_mass[i], mass.mean(dim=(0, 1)), atol=1e-5, rtol=1e-5)


def test_a_window_covering_the_grid_keeps_everything():
    grid = (5, 7)
    q, k, v, call = _call(grid, 3)
    dense_like = [Candidate("gna", (("stride", 1), ("window", (5, 7)))), Candidate("gna", (("window", (2, 2)),))]
    got = measure_call(q, k, v, call, dense_like, torch.arange(35), [0, 1, 2])
    assert float(got.error[0]) < 1e-5 and float(got.mass[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(got.error[1]) > 0.05 and float(got.mass[1]) < 0.9


def test_ladders():
    assert window_ladder(16) == [2, 3, 4, 6, 8, 11, 16]
    assert window_ladder(128) == [16, 23, 32, 45, 64, 91, 128]
    assert window_ladder(3) == [2, 3]
    for grid in [(16, 16), (32, 24), (21, 45, 80), (3, 6, 8), (12,)]:
        windows = gna_windows(grid)
        assert windows and tuple(grid) not in windows
        assert all(len(w) == len(grid) and all(1 <= a <= n for a, n in zip(w, grid)) for w in windows)
        assert len(windows) <= 40  # measuring cost grows with the candidates
    with pytest.raises(ValueError, match=r"calibration cannot try method 'agent'"):
        candidates_for((4, 4), ["agent"])


def test_batch_rows_and_positions():
    assert batch_rows(1, 2) == [0]
    assert batch_rows(2, 2) == [0, 1]
    assert batch_rows(12, 2) == [0, 11]  # both CFG halves of a batched [uncond, cond] call
    assert batch_rows(12, 3) == [0, 6, 11]
    pos = sample_positions(100, 10, torch.Generator().manual_seed(0), "cpu")
    assert len(set(pos.tolist())) == 10 and pos.max() < 100
    assert sample_positions(5, 10, torch.Generator(), "cpu").tolist() == [0, 1, 2, 3, 4]
