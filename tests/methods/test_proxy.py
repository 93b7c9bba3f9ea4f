"""`proxy`: own window exactly + log-count-biased proxies of the other windows, against the brute force
of `diffattn.methods.naive`. Bad knobs: `ProxyAttention.invalid_knobs`, run by test_method_contract.py."""

from __future__ import annotations

import math
import random

import pytest
import torch

import diffattn
from diffattn.kernels import reference_attention
from diffattn.methods import AttendCall
from diffattn.methods.base import call_generator
from diffattn.methods.naive import proxy_attention, proxy_window_ids
from diffattn.methods.proxy import axis_windows, sampled_tokens
from diffattn.tiny import tiny_output

from ..helpers import make_method, random_qkv, random_text

TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def _random_configs(count: int = 24):
    rng = random.Random(1234)
    cases = []
    for i in range(count):
        ndim = 2 if i % 3 else 3
        grid = tuple(rng.choice([3, 5, 6, 7, 9, 11]) for _ in range(ndim))
        if ndim == 3:
            grid = (rng.choice([1, 2, 3, 5]),) + grid[1:]
        window = tuple(rng.choice([1, 2, 3, 4, 5, 16]) for _ in range(ndim))
        cases.append(
            dict(
                grid=grid,
                window=window,
                shift=bool(i % 2),
                layer_index=rng.choice([0, 1]),
                proxy="sample" if i % 4 in (1, 2) else "mean",
                text=rng.choice([0, 4]),
                seed=i,
            )
        )
    return cases


CONFIGS = _random_configs()


def _config_id(c):
    g, w = "x".join(map(str, c["grid"])), "x".join(map(str, c["window"]))
    shift = f"shift-l{c['layer_index']}" if c["shift"] else "noshift"
    return f"g{g}-w{w}-{shift}-{c['proxy']}-text{c['text']}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("text", [0, 5], ids=["no-text", "text5"])
@pytest.mark.parametrize("grid", [(5, 7), (1, 8), (3, 4, 5)], ids=["5x7", "1x8", "3x4x5"])
def test_one_token_windows_equal_dense(grid, text, dtype):
    n = math.prod(grid)
    q, k, v = random_qkv(n, dtype)
    tk, tv, tm = random_text(text, dtype) if text else (None, None, None)
    call = AttendCall(grid=grid, extra_k=tk, extra_v=tv, extra_mask=tm)
    out = make_method("proxy", window=1).attend(q, k, v, call)
    ref, _ = reference_attention(q, k, v, extra_k=tk, extra_v=tv, extra_mask=tm)
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("cfg", CONFIGS, ids=_config_id)
def test_matches_brute_force_reference(cfg):
    grid, n = cfg["grid"], math.prod(cfg["grid"])
    q, k, v = random_qkv(n, seed=cfg["seed"])
    text = random_text(cfg["text"], seed=cfg["seed"] + 100) if cfg["text"] else None
    method = make_method("proxy", window=cfg["window"], shift=cfg["shift"], proxy=cfg["proxy"], seed=cfg["seed"])
    tk, tv, tm = text if text is not None else (None, None, None)
    call = AttendCall(
        grid=grid, extra_k=tk, extra_v=tv, extra_mask=tm, layer="blk.attn1", layer_index=cfg["layer_index"],
        timestep=999.0, scale=0.3,
    )  # fmt: skip
    out = method.attend(q, k, v, call)
    shifted = cfg["shift"] and cfg["layer_index"] == 1
    index = None
    if cfg["proxy"] == "sample":
        layout = method.layout(grid, cfg["layer_index"])
        index = sampled_tokens(layout, call_generator(cfg["seed"], "blk.attn1", 999.0))
        ids, _ = proxy_window_ids(grid, cfg["window"], shifted)
        assert torch.equal(ids[index], torch.arange(index.numel())), "a sampled proxy lies outside its window"
    ref = proxy_attention(q, k, v, grid, cfg["window"], shifted, index, text, scale=0.3)
    torch.testing.assert_close(out, ref, atol=TOL[torch.float32], rtol=TOL[torch.float32])


@pytest.mark.parametrize("proxy", ["mean", "sample"])
def test_bf16_matches_brute_force(proxy):
    grid, window = (9, 11), (4, 4)
    q, k, v = random_qkv(math.prod(grid), torch.bfloat16)
    text = random_text(6, torch.bfloat16)
    method = make_method("proxy", window=window, proxy=proxy, shift=True)
    call = AttendCall(grid=grid, extra_k=text[0], extra_v=text[1], extra_mask=text[2], layer="a", layer_index=1)
    index = sampled_tokens(method.layout(grid, 1), call_generator(0, "a", None)) if proxy == "sample" else None
    ref = proxy_attention(q, k, v, grid, window, True, index, text)
    out = method.attend(q, k, v, call)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=3e-2, rtol=3e-2)


def test_sampling_is_seeded_by_seed_layer_and_timestep():
    method = make_method("proxy", window=2, proxy="sample", seed=7)
    layout = method.layout((16, 16))
    draws = {
        key: sampled_tokens(layout, call_generator(*key))
        for key in [(7, "a", 1.0), (7, "a", 2.0), (7, "b", 1.0), (8, "a", 1.0)]
    }
    assert torch.equal(draws[(7, "a", 1.0)], sampled_tokens(layout, call_generator(7, "a", 1.0)))
    first = draws.pop((7, "a", 1.0))
    assert all(not torch.equal(first, other) for other in draws.values())


@pytest.mark.parametrize(
    "length, window, shifted, expected",
    [
        (10, 4, False, [4, 4, 2]),  # last window holds the remainder
        (10, 4, True, [2, 4, 4]),  # shifted by window // 2
        (9, 4, True, [2, 4, 3]),
        (5, 8, True, [5]),  # window covers the axis: clamped, never shifted
        (3, 1, True, [1, 1, 1]),  # 1-token windows: shift 0
    ],
    ids=["remainder", "shift-even", "shift-odd", "covering", "one-token"],
)
def test_axis_windows(length, window, shifted, expected):
    wins = axis_windows(length, min(window, length), shifted)
    assert [len(r) for r in wins] == expected
    assert [i for r in wins for i in r] == list(range(length))


def test_shift_alternates_with_layer_index():
    method = make_method("proxy", window=4, shift=True)
    even, odd = method.layout((8, 8), 0), method.layout((8, 8), 1)
    assert even.counts.tolist() == [16] * 4
    assert odd.counts.tolist() == [4, 8, 4, 8, 16, 8, 4, 8, 4]
    assert make_method("proxy", window=4).layout((8, 8), 1).counts.tolist() == [16] * 4


def test_dimensionality_mismatch_is_named():
    with pytest.raises(ValueError, match=r"proxy window=\(2, 2\) is 2-D but this model's token grid is 3-D"):
        make_method("proxy", window=(2, 2)).check_ndim(3)


# --- every tiny family --------------------------------------------------------------------------


# proxy="mean" is the method contract's example (test_method_contract.py), with apply/remove bit-exactness
@pytest.mark.parametrize("proxy", ["sample"])
def test_runs_on_every_family_and_changes_output(tiny, proxy):
    name, pipe, base = tiny
    with diffattn.attention(pipe, "proxy", window=2, shift=True, proxy=proxy) as h:
        out = tiny_output(pipe, name)
    stats = h.stats()
    assert stats and all(s.sparse > 0 and s.fallback == 0 and s.dense == 0 for s in stats.values()), stats
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, base, atol=1e-4)
