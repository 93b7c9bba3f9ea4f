"""`diffattn.sim`: analytical tile counts equal a brute-force count over the reference GNA mask."""

from __future__ import annotations

import itertools
import json
import math
import random
import re

import pytest
import torch

from diffattn.cli import main
from diffattn.methods.gna import GNAConfig, gna_plan
from diffattn.methods.naive import gna_mask
from diffattn.sim import GPUS, amdahl, plan_bound, simulate


def _axis_tile_ids(length: int, dilation: int, tile: int) -> tuple[torch.Tensor, int]:
    """Tile of every position of one axis (tiles are runs of ``tile`` tokens of a dilation group)."""
    x = torch.arange(length)
    g, c = x % dilation, x // dilation
    per_group = [math.ceil(len(range(gi, length, dilation)) / tile) for gi in range(dilation)]
    offset = torch.tensor([0] + list(itertools.accumulate(per_group))[:-1])
    return offset[g] + c // tile, sum(per_group)


def _token_tile_ids(grid, dilation, tile) -> tuple[torch.Tensor, int]:
    """Tile of every token of the flattened grid (row-major, as `gna_mask` flattens)."""
    ids, n = torch.zeros(1, dtype=torch.long), 1
    for length, d, t in zip(grid, dilation, tile):
        axis_ids, count = _axis_tile_ids(length, d, t)
        ids, n = (ids[:, None] * count + axis_ids[None, :]).flatten(), n * count
    return ids, n


def brute_force(grid, window, stride, dilation, q_tile, kv_tile) -> dict:
    """Counts straight from the ``[N, N]`` reference mask, tile pair by tile pair."""
    win, st, dil = GNAConfig(window, stride, dilation).resolve(grid)
    mask = gna_mask(grid, win, st, dil)
    q_id, nq = _token_tile_ids(grid, dil, q_tile)
    k_id, nk = _token_tile_ids(grid, dil, kv_tile)
    pair = q_id[:, None] * nk + k_id[None, :]
    attended = torch.bincount(pair[mask], minlength=nq * nk)
    size = torch.bincount(pair.flatten(), minlength=nq * nk)  # real (query, key) pairs per tile pair
    live = int((attended > 0).sum())
    full = int(((attended == size) & (attended > 0)).sum())
    return {
        "attended": int(mask.sum()),
        "n": mask.shape[0],
        "tile_pairs": nq * nk,
        "live": live,
        "full": full,
        "partial": live - full,
    }


def _random_configs(count: int, seed: int = 0) -> list[tuple]:
    rng = random.Random(seed)
    max_len = {1: 60, 2: 24, 3: 11}
    configs = []
    for i in range(count):
        ndim = 1 + i % 3
        grid, window, stride, dilation, q_tile, kv_tile = [], [], [], [], [], []
        for _ in range(ndim):
            length = rng.randint(1, max_len[ndim])
            w = rng.randint(1, length + 2)  # > length: clamped to a dense axis
            d = rng.randint(1, max(1, length // w)) if rng.random() < 0.4 else 1
            grid.append(length), window.append(w), dilation.append(d)
            stride.append(rng.randint(1, w))
            # mostly several tiles per axis; sometimes one tile larger than the axis (all padding)
            q_tile.append(rng.randint(1, length + 2 if rng.random() < 0.2 else max(2, length // 2)))
            kv_tile.append(rng.randint(1, length + 2 if rng.random() < 0.2 else max(2, length // 2)))
        configs.append(tuple(map(tuple, (grid, window, stride, dilation, q_tile, kv_tile))))
    return configs


RANDOM_CONFIGS = _random_configs(30)
HAND_CONFIGS = [
    ((33,), (7,), (3,), (2,), (4,), (5,)),  # 1-D, dilation, odd tiles
    ((17, 13), (5, 4), (1, 2), (1, 3), (4, 3), (3, 5)),  # dilation 3 on columns
    ((16, 16), (8, 8), (8, 8), (1, 1), (8, 4), (8, 4)),  # blocked, tiles divide: block-sparse
    ((15, 17), (6, 6), (3, 3), (1, 1), (4, 8), (8, 4)),  # Q and KV tiles differ
    ((5, 9, 11), (3, 5, 4), (2, 5, 1), (1, 1, 2), (2, 4, 3), (3, 2, 4)),
    ((6, 10, 10), (6, 10, 10), (1, 1, 1), (1, 1, 1), (4, 4, 8), (4, 4, 8)),  # dense limit
]


def _cid(c: tuple) -> str:
    return "grid{}-w{}-s{}-d{}-q{}-kv{}".format(*("x".join(map(str, t)) for t in c))


@pytest.mark.parametrize("config", HAND_CONFIGS + RANDOM_CONFIGS, ids=_cid)
def test_counts_match_brute_force(config):
    grid, window, stride, dilation, q_tile, kv_tile = config
    ref = brute_force(*config)
    sim = simulate(grid, window, stride, dilation, q_tile=q_tile, kv_tile=kv_tile)
    assert (sim.tile_pairs, sim.live_tile_pairs, sim.full_tile_pairs, sim.partial_tile_pairs) == (
        ref["tile_pairs"],
        ref["live"],
        ref["full"],
        ref["partial"],
    )
    assert sim.attended_pairs == ref["attended"] and sim.num_tokens == ref["n"]
    assert sim.token_density == ref["attended"] / ref["n"] ** 2
    assert sim.tile_density == ref["live"] / ref["tile_pairs"]
    assert sim.token_bound == 1 / sim.token_density and sim.tile_bound == 1 / sim.tile_density
    assert sim.block_sparse == (ref["partial"] == 0)


def test_random_configs_cover_the_brief():
    """>= 20 random configs over 1-, 2- and 3-D, with dilation, clamping and tiles not dividing the grid."""
    assert len(RANDOM_CONFIGS) >= 20
    assert {len(c[0]) for c in RANDOM_CONFIGS} == {1, 2, 3}
    assert any(d > 1 for c in RANDOM_CONFIGS for d in c[3])
    assert any(w > n for c in RANDOM_CONFIGS for n, w in zip(c[0], c[1]))
    assert any(n % t for c in RANDOM_CONFIGS for n, t in zip(c[0], c[4]))
    assert any(n % 2 for c in RANDOM_CONFIGS for n in c[0])


MIN_STRIDE_CONFIGS = [
    ((24,), (8,), (1,), (4,), (4,)),  # 8 aligns the windows to the tiles; 4 does not (windows centre on groups)
    ((20,), (6,), (1,), (4,), (4,)),  # window not a tile multiple: none
    ((12, 16), (4, 8), (1, 1), (2, 4), (4, 4)),
    ((12, 14), (6, 4), (1, 1), (3, 2), (3, 2)),  # 14 = 7 tiles of 2
    ((9, 16), (3, 8), (1, 2), (3, 4), (3, 4)),  # dilation 2 on columns
    ((10, 12), (12, 6), (1, 1), (4, 3), (4, 3)),  # rows clamped to dense
    ((6, 8, 8), (3, 4, 4), (1, 1, 1), (3, 2, 2), (3, 2, 2)),
]


@pytest.mark.parametrize(
    "grid,window,dilation,q_tile,kv_tile",
    MIN_STRIDE_CONFIGS,
    ids=[_cid((c[0], c[1], (0,), *c[2:])) for c in MIN_STRIDE_CONFIGS],
)
def test_min_block_sparse_stride_is_the_componentwise_smallest(grid, window, dilation, q_tile, kv_tile):
    sim = simulate(grid, window, 1, dilation, q_tile=q_tile, kv_tile=kv_tile)
    block_sparse = [
        s
        for s in itertools.product(*(range(1, w + 1) for w in window))
        if brute_force(grid, window, s, dilation, q_tile, kv_tile)["partial"] == 0
    ]
    if sim.min_block_sparse_stride is None:
        assert block_sparse == []
    else:
        assert sim.min_block_sparse_stride in block_sparse
        assert all(all(a >= b for a, b in zip(s, sim.min_block_sparse_stride)) for s in block_sparse)
        assert simulate(grid, window, sim.min_block_sparse_stride, dilation, q_tile, kv_tile).block_sparse


def test_min_stride_configs_include_both_outcomes():
    found = [simulate(g, w, 1, d, q_tile=q, kv_tile=k).min_block_sparse_stride for g, w, d, q, k in MIN_STRIDE_CONFIGS]
    assert None in found and any(s is not None and max(s) > 1 for s in found)


@pytest.mark.parametrize("share,speedup", [(0.0, 8.0), (0.5, 2.0), (0.8, 10.24), (1.0, 7.5)], ids=str)
def test_amdahl(share, speedup):
    expected = 1.0 / ((1.0 - share) + share / speedup)
    assert amdahl(share, speedup) == pytest.approx(expected, rel=1e-12)
    sim = simulate((64, 64), 16, 16, attention_share=share)
    assert sim.end_to_end_bound == pytest.approx(amdahl(share, sim.tile_bound), rel=1e-12)
    assert sim.end_to_end_token_bound == pytest.approx(amdahl(share, sim.token_bound), rel=1e-12)
    assert 1.0 <= sim.end_to_end_bound <= sim.tile_bound


def test_no_share_no_end_to_end_bound():
    sim = simulate((64, 64), 16)
    assert sim.end_to_end_bound is None and "end-to-end" not in sim.format()


@pytest.mark.parametrize(
    "grid,window,stride", [((32, 32), (8, 8), (1, 1)), ((32, 32), (8, 8), (8, 8)), ((4, 8, 8), (2, 4, 4), (1, 1, 1))]
)
def test_plan_bound_is_inverse_plan_density(grid, window, stride):
    win, st, dil = GNAConfig(window, stride).resolve(grid)
    plan = gna_plan(grid, win, st, dil)
    assert plan_bound(plan) == 1.0 / plan.density()
    assert 1.0 <= plan_bound(plan) <= simulate(grid, window, stride).token_bound + 1e-9


def test_roofline_is_an_estimate_from_flops():
    sim = simulate((256, 256), 80, 1, gpu="h100", batch=2, heads=24, head_dim=128)
    r = sim.roofline
    assert r is not None and r.label == "estimate" and r.peak_tflops == GPUS["h100"].peak_tflops == 989.4
    per_pair = 4 * 128 * 24 * 2
    assert r.dense_flops == per_pair * 65536**2
    assert r.tile_flops == per_pair * sim.live_tile_pairs * 128 * 128
    assert r.ideal_flops == per_pair * sim.attended_pairs
    assert r.dense_ms == pytest.approx(r.dense_flops / 989.4e12 * 1e3)
    assert r.ideal_ms < r.tile_ms < r.dense_ms  # stride 1 has partial tiles: more work than ideal
    roofline_line = [line for line in sim.format().splitlines() if "TFLOP/s" in line]
    assert len(roofline_line) == 1 and "estimate" in roofline_line[0] and "not a measurement" in roofline_line[0]
    assert sim.to_dict()["roofline_estimate"]["label"] == "estimate"
    assert "989.4" in r.source and "datasheet" in r.source
    assert simulate((256, 256), 80).roofline is None


def test_published_cases():
    """FLUX-4K and HunyuanVideo-720p (GNA paper): bounds the published kernel figures are quoted against."""
    flux1, flux16 = simulate((256, 256), 80, 1), simulate((256, 256), 80, 16)
    assert flux1.token_bound == flux16.token_bound == 65536 / 6400
    assert flux16.block_sparse and flux16.tile_bound == flux16.token_bound
    assert not flux1.block_sparse and flux1.tile_bound < flux1.token_bound
    assert flux1.min_block_sparse_stride == (16, 16)  # 16x8 tiles: rows need 16, columns 8 is not enough
    hv1, hv16 = simulate((30, 48, 80), (18, 24, 24), 1), simulate((30, 48, 80), (18, 24, 24), (16, 8, 8))
    assert hv1.token_bound == hv16.token_bound == 115200 / (18 * 24 * 24)
    assert hv1.tile_bound < hv16.tile_bound < hv16.token_bound  # frames: window 18 is not a multiple of 4
    assert hv16.axes[1].live == hv16.axes[1].full and hv16.axes[0].live > hv16.axes[0].full


def test_defaults_and_dense_limit():
    for ndim, tile in ((1, (128,)), (2, (16, 8)), (3, (4, 4, 8))):
        sim = simulate((40,) * ndim, 100)
        assert sim.q_tile == sim.kv_tile == tile
        assert sim.window == (40,) * ndim and sim.token_density == 1.0 and sim.tile_density == 1.0
        assert sim.block_sparse and sim.min_block_sparse_stride == (1,) * ndim


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"grid": (0, 8), "window": 3}, ValueError, r"grid=\(0, 8\) must be >= 1"),
        ({"grid": (4, 4, 4, 4), "window": 3}, ValueError, "1 to 3 axes"),
        ({"grid": (8, 8), "window": 3, "stride": 4}, ValueError, r"stride must be in \[1, window\]"),
        ({"grid": (8, 8), "window": 0}, ValueError, "window=0 must be >= 1"),
        ({"grid": (8, 8), "window": (3, 3, 3)}, ValueError, "has 3 axes but the token grid has 2"),
        ({"grid": (8, 8), "window": 3, "q_tile": (4, 0)}, ValueError, r"q_tile=\(4, 0\) must be >= 1"),
        ({"grid": (8, 8), "window": 3, "kv_tile": (4, 4, 4)}, ValueError, "give an int or a 2-tuple"),
        ({"grid": (8, 8), "window": 3, "q_tile": 2.5}, TypeError, "q_tile=2.5 must be an int"),
        ({"grid": (8, 8), "window": 3, "attention_share": 1.2}, ValueError, r"must be a number in \[0, 1\]"),
        ({"grid": (8, 8), "window": 3, "attention_share": float("nan")}, ValueError, r"in \[0, 1\]"),
        ({"grid": (8, 8), "window": 3, "gpu": "a100"}, ValueError, "accepted: h100"),
        ({"grid": (8, 8), "window": 3, "heads": 0}, ValueError, "heads=0 must be an int >= 1"),
        ({"grid": (8, 8), "window": 3, "dilation": 3}, ValueError, "dilation must be <= 2"),
    ],
    ids=[
        "zero-grid",
        "4d-grid",
        "stride-gt-window",
        "zero-window",
        "window-ndim",
        "zero-tile",
        "tile-ndim",
        "float-tile",
        "share-gt-1",
        "share-nan",
        "unknown-gpu",
        "zero-heads",
        "dilation-too-big",
    ],
)
def test_bad_inputs(kwargs, error, match):
    with pytest.raises(error, match=match):
        simulate(**kwargs)


def test_amdahl_bad_inputs():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        amdahl(-0.1, 2.0)
    with pytest.raises(ValueError, match="must be > 0"):
        amdahl(0.5, 0.0)


def test_cli_simulate_text(capsys):
    argv = ["simulate", "--grid", "256,256", "--window", "80,80", "--stride", "16,16", "--attention-share", "0.8"]
    assert main([*argv, "--gpu", "h100", "--heads", "24", "--head-dim", "128", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "bound 10.24x" in out and "0 partial (perfectly block-sparse)" in out
    assert "end-to-end bound at attention share 0.80: 3.60x" in out
    assert "H100 SXM roofline estimate" in out and "(estimate)" in out


def test_cli_simulate_json_matches_api(capsys):
    argv = ["simulate", "--grid", "30,48,80", "--window", "18,24,24", "--stride", "16,8,8"]
    assert main([*argv, "--q-tile", "2,8,8", "--kv-tile", "2,8,8", "--gpu", "h100", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    sim = simulate((30, 48, 80), (18, 24, 24), (16, 8, 8), q_tile=(2, 8, 8), kv_tile=(2, 8, 8), gpu="h100")
    assert data == json.loads(json.dumps(sim.to_dict()))
    assert data["q_tile"] == [2, 8, 8] and data["roofline_estimate"]["label"] == "estimate"
    assert data["live_tile_pairs"] == sim.live_tile_pairs and data["tile_bound"] == sim.tile_bound


def test_cli_simulate_1d_grid(capsys):
    assert main(["simulate", "--grid", "1000", "--window", "100"]) == 0
    assert "tiles: Q 128 (128 tokens)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--stride", "81"], r"stride must be in \[1, window\]"),
        (["--q-tile", "0"], "q_tile=0 must be >= 1"),
        (["--attention-share", "1.5"], r"in \[0, 1\]"),
        (["--gpu", "a100"], "accepted: h100"),
        (["--head-dim", "0"], "head_dim=0 must be an int >= 1"),
        (["--window", "80,80,80"], "give an int or a 2-tuple"),
    ],
    ids=["stride", "tile", "share", "gpu", "head-dim", "window-ndim"],
)
def test_cli_simulate_bad_values_exit_2(capsys, extra, match):
    assert main(["simulate", "--grid", "256,256", "--window", "80", *extra]) == 2
    assert re.search(match, capsys.readouterr().err)
