"""`diffattn.sim` counts in closed form: the border / periodic-interior decomposition equals counting every query
tile, the pruned stride search equals trying every stride, and grids of 10^12 tokens per axis need no large array."""

from __future__ import annotations

import importlib
import random

import pytest

from diffattn.cli import main

sim = importlib.import_module("diffattn.sim")  # the module (the package re-exports the function `simulate`)


def _cases(seed: int, count: int) -> list[tuple[int, int, int, int, int]]:
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        n = rng.randint(1, 700)
        k = rng.randint(1, n)
        s = rng.randint(1, k)
        out.append((n, k, s, rng.choice([1, 2, 3, 4, 5, 7, 8, 16, 32]), rng.choice([1, 2, 3, 4, 6, 8, 16, 32])))
    return out


def test_periodic_decomposition_equals_counting_every_tile():
    """`_group_counts` with the decomposition forced (``direct=0``) equals the tile-by-tile count, which
    tests/kernels/test_sim.py checks against a brute-force count of (query, key) pairs."""
    cases = _cases(0, 600) + [(600, 64, 16, 16, 8), (1000, 3, 3, 128, 128), (999, 998, 1, 4, 4), (512, 512, 1, 16, 16)]
    for n, k, s, tq, tk in cases:
        assert sim._group_counts(n, k, s, tq, tk, direct=0) == sim._group_counts(n, k, s, tq, tk, direct=10**9), (
            n, k, s, tq, tk,
        )  # fmt: skip


def test_pruned_stride_search_equals_trying_every_stride():
    rng = random.Random(1)
    checked = found = 0
    while checked < 150:
        n, d = rng.randint(2, 160), rng.randint(1, 3)
        k = rng.randint(1, n // d)
        if k * d > n or k == n:
            continue
        tq, tk = rng.choice([1, 2, 3, 4, 8]), rng.choice([1, 2, 3, 4, 8])
        expected = next(
            (s for s in range(1, k + 1)
             if all(len(set(sim._group_counts(m, k, s, tq, tk))) == 1 for m, _ in sim._group_lengths(n, d))),
            None,
        )  # fmt: skip
        assert sim._min_stride(n, k, d, tq, tk) == expected, (n, k, d, tq, tk)
        checked, found = checked + 1, found + (expected is not None)
    assert 0 < found < checked  # both outcomes were exercised


def test_huge_grids_are_counted_in_closed_form():
    """10^12 tokens, window 3, 128-token tiles: an interior query tile's keys ``[a - 1, a + 129)`` touch 3 KV tiles,
    the first and last tiles touch 2 (the old per-token arrays ran out of memory here)."""
    q_tiles = 10**12 // 128
    (axis,) = sim.simulate((10**12,), 3, 1).axes
    assert (axis.q_tiles, axis.kv_tiles, axis.live, axis.full) == (q_tiles, q_tiles, 3 * q_tiles - 2, 0)
    (axis,) = sim.simulate((10**8,), 10**8, 1).axes  # covers the axis: dense, one stride suffices
    assert axis.live == axis.full == 781_250**2 and axis.min_block_sparse_stride == 1  # 10**8 / 128 tiles
    two = sim.simulate((10**12, 10**12), (3, 5), (1, 5), q_tile=(16, 8), kv_tile=(16, 8))
    assert two.live_tile_pairs == two.axes[0].live * two.axes[1].live and two.tile_bound > 1
    odd = sim.simulate((3 * 10**11 + 16,), 4, 4, q_tile=4, kv_tile=4)  # blocked, tile-aligned: every pair is full
    assert odd.block_sparse and odd.min_block_sparse_stride == (4,)
    ragged = sim.simulate((3 * 10**11 + 17,), 4, 4, q_tile=4, kv_tile=4)  # the last window is clamped inward
    assert ragged.partial_tile_pairs == 1 and ragged.min_block_sparse_stride is None


def test_a_window_past_the_search_limit_is_a_clear_error():
    with pytest.raises(ValueError, match=r"searched for windows up to 1000000 tokens per axis"):
        sim.simulate((10**12,), 2 * 10**6, 1)


@pytest.mark.parametrize(
    "argv", [["--grid", "1000000000000", "--window", "3"], ["--grid", "100000000", "--window", "100000000"]],
    ids=["1e12-window-3", "1e8-window-1e8"],
)
def test_cli_simulate_huge_grids(capsys, argv):
    assert main(["simulate", *argv]) == 0
    assert "tile level:" in capsys.readouterr().out


def test_cli_simulate_1e12_is_not_an_int(capsys):
    """Counts are plain decimal ints everywhere: '1e12' is refused on one line, as ``--steps 1e3`` is."""
    assert main(["simulate", "--grid", "1e12", "--window", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --grid: '1e12' is not an int" in err[0]
