"""msw (HiDiffusion MSW-MSA): equals GNA blocked at shift 0, equals the independent roll -> windowed ->
unroll mask of `diffattn.methods.naive` at every shift (odd sizes too), reproducible shifts, and runs
on all ten families. Bad knobs: `MSW.invalid_knobs`, run by test_method_contract.py."""

from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import diffattn
from diffattn.functional import gna
from diffattn.kernels import reference_attention
from diffattn.methods import AttendCall, get_method
from diffattn.methods.msw import MSWConfig, msw_plan
from diffattn.methods.naive import msw_mask
from diffattn.tiny import tiny_output

from ..helpers import random_qkv

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
MSW = get_method("msw")


def _qkv(n: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    return random_qkv(n, dtype, seed=seed + n, dim=16)


def _call_with_quarter(cfg: MSWConfig, quarter: int, grid: tuple[int, ...], **extra) -> AttendCall:
    """An AttendCall whose (layer, timestep) draws shift ``quarter`` under ``cfg``."""
    for t in range(1000):
        if cfg.shift_quarter("blocks.0.attn1", float(t)) == quarter:
            return AttendCall(grid=grid, layer="blocks.0.attn1", timestep=float(t), **extra)
    raise AssertionError(f"no timestep below 1000 draws quarter {quarter}")


# --------------------------------------------------------------------------- exactness

DIVISIBLE = [
    pytest.param((8, 8), None, (4, 4), id="2d-8x8-default"),
    pytest.param((12, 8), (4, 4), (4, 4), id="2d-12x8-w4"),
    pytest.param((16, 24), (8, 12), (8, 12), id="2d-16x24-w8x12"),
    pytest.param((3, 8, 8), None, (1, 4, 4), id="3d-3x8x8-default-per-frame"),
    pytest.param((4, 6, 8), (2, 3, 4), (2, 3, 4), id="3d-4x6x8-w2x3x4"),
]


@pytest.mark.parametrize("text", [0, 5], ids=["no-text", "text5"])
@pytest.mark.parametrize("grid,window,resolved", DIVISIBLE)
def test_unshifted_equals_gna_blocked(grid, window, resolved, text):
    q, k, v = _qkv(math.prod(grid))
    ek, ev, _ = _qkv(text) if text else (None, None, None)
    method = MSW(MSWConfig(window=window, shift=False))
    assert method.config.resolve_window(grid) == resolved
    out = method.attend(q, k, v, AttendCall(grid=grid, extra_k=ek, extra_v=ev, layer="x", timestep=1.0))
    expected = gna(q, k, v, grid, resolved, resolved, extra_k=ek, extra_v=ev, backend="cpu")
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


SHIFTED = [
    pytest.param((9, 7), None, id="2d-9x7-default"),
    pytest.param((5, 11), None, id="2d-5x11-default"),
    pytest.param((8, 12), None, id="2d-8x12-default"),
    pytest.param((13, 10), (4, 3), id="2d-13x10-w4x3"),
    pytest.param((3, 7, 5), None, id="3d-3x7x5-default"),
    pytest.param((5, 6, 9), (2, 4, 4), id="3d-5x6x9-w2x4x4"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("text", [0, 4], ids=["no-text", "text4"])
@pytest.mark.parametrize("quarter", [0, 1, 2, 3], ids=["shift0", "shift1q", "shift2q", "shift3q"])
@pytest.mark.parametrize("grid,window", SHIFTED)
def test_shifted_equals_roll_window_unroll_reference(grid, window, quarter, text, dtype):
    q, k, v = _qkv(math.prod(grid), dtype)
    ek, ev, _ = _qkv(text, dtype) if text else (None, None, None)
    emask = torch.tensor([[True, True, False, True], [True, False, True, True]]) if text else None
    cfg = MSWConfig(window=window, seed=7)
    call = _call_with_quarter(cfg, quarter, grid, extra_k=ek, extra_v=ev, extra_mask=emask)
    method = MSW(cfg)
    win = cfg.resolve_window(grid)
    shift = tuple(0 if w >= n else w // 4 * quarter for w, n in zip(win, grid))  # HiDiffusion's rounding
    assert method.shift(call) == shift
    out = method.attend(q, k, v, call)
    ref, _ = reference_attention(q, k, v, msw_mask(grid, win, shift), extra_k=ek, extra_v=ev, extra_mask=emask)
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("quarter", [1, 2, 3], ids=["shift1q", "shift2q", "shift3q"])
@pytest.mark.parametrize("grid,window", SHIFTED)
def test_shifted_equals_literal_roll_gna_blocked_unroll(grid, window, quarter):
    """The shift folded into the plan equals rolling the tensors, GNA blocked, rolling back."""
    q, k, v = _qkv(math.prod(grid))
    cfg = MSWConfig(window=window, seed=1)
    call = _call_with_quarter(cfg, quarter, grid)
    method = MSW(cfg)
    win, shift = cfg.resolve_window(grid), method.shift(call)
    dims = tuple(range(1, len(grid) + 1))

    def roll(t, sign):
        b, _, h, d = t.shape
        return torch.roll(t.reshape(b, *grid, h, d), tuple(sign * s for s in shift), dims).reshape(b, -1, h, d)

    rolled = gna(*(roll(t, -1) for t in (q, k, v)), grid, win, win, backend="cpu")
    torch.testing.assert_close(method.attend(q, k, v, call), roll(rolled, 1), atol=1e-5, rtol=1e-5)
    assert torch.equal(method.plan(grid, shift).dense_mask(), msw_mask(grid, win, shift))


def _hidiffusion_msw(q, k, v, grid: tuple[int, int], quarter: int):
    """HiDiffusion's MSW-MSA re-stated literally (even grids): window ``(H/2, W/2)``, ``shift = window // 4 * k``,
    roll by ``-shift``, 2x2 window partition, attention inside each window, reverse, roll back."""
    b, _, h, d = q.shape
    height, width = grid
    win = (height // 2, width // 2)
    shift = (win[0] // 4 * quarter, win[1] // 4 * quarter)

    def partition(t):  # [B, N, H, D] -> [B * 4, window tokens, H, D]
        t = torch.roll(t.reshape(b, height, width, h, d), (-shift[0], -shift[1]), (1, 2))
        t = t.reshape(b, 2, win[0], 2, win[1], h, d).permute(0, 1, 3, 2, 4, 5, 6)
        return t.reshape(b * 4, win[0] * win[1], h, d)

    out = reference_attention(partition(q), partition(k), partition(v))[0]
    out = out.reshape(b, 2, 2, win[0], win[1], h, d).permute(0, 1, 3, 2, 4, 5, 6).reshape(b, height, width, h, d)
    return torch.roll(out, shift, (1, 2)).reshape(b, height * width, h, d)


# (grid, window of the default 2x2 windows): window % 4 == 2 or 3 on some axis, where HiDiffusion's
# ``window // 4 * k`` and ``(k * window) // 4`` differ for k = 2, 3 (SD 1.5 at 1184 px: 148 latent rows, window
# 74 -> % 4 = 2; 1200 px: 150 rows, window 75 -> 3)
ROUNDING = [
    pytest.param((12, 14), id="12x14-w6x7"),
    pytest.param((20, 12), id="20x12-w10x6"),
    pytest.param((22, 16), id="22x16-w11x8"),
]


@pytest.mark.parametrize("quarter", [1, 2, 3], ids=["shift1q", "shift2q", "shift3q"])
@pytest.mark.parametrize("grid", ROUNDING)
def test_shift_rounds_as_hidiffusion(grid, quarter):
    """issue 23: msw shifted by ``(k * window) // 4``; HiDiffusion by ``window // 4 * k`` (5-10% output apart)."""
    cfg = MSWConfig(seed=2)
    call = _call_with_quarter(cfg, quarter, grid)
    method = MSW(cfg)
    win = cfg.resolve_window(grid)
    assert method.shift(call) == tuple(w // 4 * quarter for w in win)
    q, k, v = _qkv(math.prod(grid), seed=quarter)
    out = method.attend(q, k, v, call)
    torch.testing.assert_close(out, _hidiffusion_msw(q, k, v, grid, quarter), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(method.oracle(q, k, v, call).float(), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("quarter", [1, 2, 3], ids=["shift1q", "shift2q", "shift3q"])
@pytest.mark.parametrize("grid", [(8, 8), (16, 24), (24, 8)], ids=lambda g: "x".join(map(str, g)))
def test_window_divisible_by_4_is_unchanged(grid, quarter):
    """window % 4 == 0: HiDiffusion's rounding gives the shift the plan had before, so the output is bit-identical."""
    cfg = MSWConfig(seed=2)
    call = _call_with_quarter(cfg, quarter, grid)
    method = MSW(cfg)
    win = cfg.resolve_window(grid)
    before = tuple((quarter * w) // 4 for w in win)  # the old rule
    assert method.shift(call) == before
    q, k, v = _qkv(math.prod(grid), seed=quarter)
    out = method.attend(q, k, v, call)
    assert torch.equal(out, method.plan_attention(q, k, v, msw_plan(grid, win, before), call))
    torch.testing.assert_close(out, _hidiffusion_msw(q, k, v, grid, quarter), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", [(9, 7), (1, 5), (3, 7, 5), (10, 10)], ids=lambda g: "x".join(map(str, g)))
def test_every_query_attends_a_full_window(grid):
    """Non-divisible axes: the last window is clamped inside the grid, never smaller or padded."""
    method = MSW(MSWConfig())
    counts = method.plan(grid).dense_mask().sum(dim=1)
    assert bool((counts == math.prod(method.config.resolve_window(grid))).all())


def test_window_covering_grid_is_dense():
    grid = (6, 5)
    q, k, v = _qkv(30)
    out = MSW(MSWConfig(window=100)).attend(q, k, v, AttendCall(grid=grid, layer="x", timestep=3.0))
    ref, _ = reference_attention(q, k, v)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- shifts


def _draws(cfg: MSWConfig, n: int = 400) -> list[int]:
    return [cfg.shift_quarter(f"blocks.{i % 8}.attn1", float(999 - 37 * (i // 8))) for i in range(n)]


def test_same_seed_reproduces_shifts_and_outputs():
    assert _draws(MSWConfig(seed=3)) == _draws(MSWConfig(seed=3))
    grid = (9, 7)
    q, k, v = _qkv(63)
    calls = [AttendCall(grid=grid, layer=f"b.{i}", timestep=float(t)) for i in range(3) for t in (999.0, 500.0)]
    first = [MSW(MSWConfig(seed=3)).attend(q, k, v, c) for c in calls]
    # a fresh instance, calls in reverse order and from threads: same outputs
    again = MSW(MSWConfig(seed=3))
    with ThreadPoolExecutor(max_workers=2) as pool:
        second = list(pool.map(lambda c: again.attend(q, k, v, c), calls[::-1]))[::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_different_seed_gives_different_shifts():
    base = _draws(MSWConfig(seed=0))
    for seed in (1, 2, 12345, -5):
        assert _draws(MSWConfig(seed=seed)) != base, seed


def test_shifts_cover_all_quarters_evenly():
    counts = Counter(_draws(MSWConfig(seed=11), n=800))
    assert set(counts) == {0, 1, 2, 3}
    assert all(150 <= c <= 250 for c in counts.values()), counts  # 200 expected each


def test_shift_false_never_shifts():
    assert set(_draws(MSWConfig(shift=False))) == {0}


def test_none_timestep_is_still_deterministic():
    """Without a timestep the draw still varies per layer and reproduces from a fresh config."""
    draws = [MSWConfig(seed=5).shift_quarter(f"l{i}", None) for i in range(40)]
    assert draws == [MSWConfig(seed=5).shift_quarter(f"l{i}", None) for i in range(40)]
    assert len(set(draws)) > 1


# --------------------------------------------------------------------------- config

def test_3d_window_on_image_model_is_rejected(pipelines):
    pipe = pipelines.pipe("tiny-sd")
    with pytest.raises(ValueError, match=r"msw window=\(1, 4, 4\) is 3-D but this model's token grid is 2-D"):
        diffattn.apply_attention(pipe, "msw", window=(1, 4, 4))


# --------------------------------------------------------------------------- families


@pytest.mark.slow
def test_msw_without_knobs_runs_on_every_family(tiny):
    """No family raises: video runs as 2x2 windows per frame (DESIGN 3), so every family is supported."""
    name, pipe, base = tiny
    handle = diffattn.apply_attention(pipe, "msw")
    try:
        out = tiny_output(pipe, name)
        again = tiny_output(pipe, name)
    finally:
        handle.remove()
    stats = handle.stats()
    assert stats and all(s.sparse > 0 and s.fallback == 0 for s in stats.values()), stats
    assert handle.preset is not None and handle.config == MSWConfig()
    assert not torch.allclose(out, base, atol=1e-4)
    assert torch.isfinite(out).all()
    assert torch.equal(out, again)  # seeded shifts: a rerun reproduces
    # bit-exact removal of msw on every family: test_method_contract.py


@pytest.mark.parametrize(
    "name,expected",
    [
        ("tiny-sd", ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"]),
        (
            "tiny-sdxl",
            [
                "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1",
                "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1",
                "unet.up_blocks.1.attentions.1.transformer_blocks.0.attn1",
            ],
        ),
    ],
    ids=["sd", "sdxl"],
)
def test_unet_default_layers_are_the_highest_resolution_blocks(name, expected, pipelines):
    """SD: down_blocks.0 / up_blocks.3 (tiny-sd has 2 levels, so only down_blocks.0); SDXL: down/up_blocks.1."""
    pipe = pipelines.pipe(name)
    handle = diffattn.apply_attention(pipe, "msw")
    handle.remove()
    assert handle.modules == expected
