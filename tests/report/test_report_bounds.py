"""Bounds from one place: each method's FLOP bound, GNA token/tile bounds from sim.py, Amdahl; and the timer."""

from __future__ import annotations

import collections
import math

import pytest

from diffattn.kernels import get_backend
from diffattn.methods import get_method, list_methods
from diffattn.methods.gna import gna_mask, gna_plan, gna_q_tile
from diffattn.report import end_to_end_bounds, gna_bounds, method_bounds, time_round_robin
from diffattn.report.bounds import freeswim_step_bounds, transformer_forward_flops
from diffattn.sim import amdahl, plan_bound, simulate

KNOBS = {
    "gna": {"window": (3, 5)},
    "msw": {"window": 4},
    "proxy": {"window": 4},
    "agent": {"agents": (2, 3)},
    "freeswim": {"train_grid": 3},
}


def _method(name: str, knobs: dict | None = None):
    cls = get_method(name)
    return cls(cls.make_config(**(KNOBS.get(name, {}) if knobs is None else knobs)))


def test_every_method_states_a_flop_bound():
    for name in list_methods():
        bound = _method(name).flop_bound((7, 9))
        assert bound.value >= 1.0 and bound.formula, name


# (method, knobs, grid, text tokens, image+text pairs each query computes -> N (N + T) / (N * per_query))
CASES = [
    ("dense", {}, (7, 9), 0, lambda n: n),
    # per step with CFG: W twice (3x3 windows) plus F (dense) every 2 steps, over dense twice
    ("freeswim", {"train_grid": 3}, (7, 9), 0, lambda n: (2 * 9 + n / 2) / 2),
    ("gna", {"window": (3, 5)}, (7, 9), 0, lambda n: 15),
    ("gna", {"window": (3, 5)}, (7, 9), 5, lambda n: 15 + 5),
    ("gna", {"window": 50}, (7, 9), 0, lambda n: n),  # window clamped to the grid: dense
    ("msw", {"window": 4}, (7, 9), 0, lambda n: 16),
    ("msw", {}, (5, 8), 3, lambda n: 3 * 4 + 3),  # default 2x2 windows: ceil(5/2) x ceil(8/2)
    ("proxy", {"window": 4}, (8, 12), 0, lambda n: 16 + 6),  # own window + one proxy per window (2 x 3)
    ("proxy", {"window": 20}, (8, 12), 2, lambda n: n + 2),  # one window: dense
    ("agent", {"agents": (2, 3)}, (8, 12), 0, lambda n: 2 * 6),
    ("agent", {"agents": (2, 3)}, (8, 12), 4, lambda n: 6 + 6 * (n + 4) / n),  # agents also score text keys
    ("agent", {"agents": (6, 8)}, (8, 12), 0, lambda n: n),  # 2 x 48 agents >= 96 tokens: dense fallback
]


@pytest.mark.parametrize(
    "name, knobs, grid, text, per_query", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}-t{c[3]}" for c in CASES]
)
def test_flop_bound_counts_pairs(name, knobs, grid, text, per_query):
    n = math.prod(grid)
    assert _method(name, knobs).flop_bound(grid, text).value == pytest.approx((n + text) / per_query(n))


def test_flop_bound_rejects_negative_text():
    with pytest.raises(ValueError, match="extra_tokens=-1"):
        _method("gna").flop_bound((7, 9), -1)


@pytest.mark.parametrize("grid, window, stride", [((9, 11), (3, 5), (1, 1)), ((16, 16), (8, 8), (8, 8))])
def test_gna_bounds_match_the_mask_and_the_plan(grid, window, stride):
    b = gna_bounds(grid, window, stride)
    mask = gna_mask(grid, window, stride, (1, 1))
    assert b.token_bound == pytest.approx(mask.numel() / mask.sum().item())
    tile = gna_q_tile(grid, window, stride, (1, 1), get_backend("cpu"))  # the query tile the CPU engine runs
    assert b.plan_bound == plan_bound(gna_plan(grid, window, stride, (1, 1), tile))
    assert b.tile_bound == simulate(grid, window, stride).tile_bound
    assert b.plan_bound <= b.token_bound + 1e-9  # the kernel never does less work than the pattern


def test_method_bounds_gna_like_and_amdahl():
    gna = method_bounds(_method("gna", {"window": 4, "stride": 4}), (16, 16), attention_share=0.6)
    assert gna.flop_bound == gna.token_bound == 16.0 and gna.tile_bound is not None
    assert gna.end_to_end_bound == pytest.approx(amdahl(0.6, 16.0)) and gna.end_to_end_bound < 1 / 0.4
    msw = method_bounds(_method("msw", {}), (16, 16))
    assert msw.token_bound == msw.flop_bound == 4.0 and msw.end_to_end_bound is None
    agent = method_bounds(_method("agent"), (8, 12), attention_share=0.0)
    assert agent.token_bound is None and agent.end_to_end_bound == 1.0
    with pytest.raises(ValueError, match="share"):
        method_bounds(_method("agent"), (8, 12), attention_share=1.5)


def test_end_to_end_bounds_weigh_each_module_by_its_dense_time():
    """Module a: all calls sparse at the 16x FLOP bound; b: half its calls fell back; c: no grid seen (dense)."""
    gna = _method("gna", {"window": 4, "stride": 4})
    calls = collections.namedtuple("calls", "sparse fallback dense")
    stats = {"a": calls(4, 0, 0), "b": calls(2, 2, 0), "c": calls(0, 0, 3)}
    grids = {"a": ((16, 16), 0), "b": ((8, 8), 0)}
    dense_s = {"a": 1.0, "b": 0.5, "c": 0.5}
    b = end_to_end_bounds(gna, stats, grids, dense_s, dense_step_s=4.0, modules=["a", "b", "c"])
    predicted = 1.0 / 16 + 0.5 * (0.5 + 0.5 / 4) + 0.5  # b's 8x8 grid: window 4 keeps 16 of 64 keys
    assert b["attention_bound"] == pytest.approx(2.0 / predicted)
    assert b["dense_attention_share"] == 0.5
    assert b["end_to_end_bound"] == pytest.approx(amdahl(0.5, b["attention_bound"]))
    assert b["finest_grid"] == [16, 16] and b["text_tokens"] == 0
    assert b["flop_bound"] == b["token_bound"] == 16.0
    none = end_to_end_bounds(gna, {"c": calls(0, 0, 1)}, {}, {"c": 1.0}, dense_step_s=0.5, modules=["c"])
    assert none["attention_bound"] == none["end_to_end_bound"] == 1.0 and none["finest_grid"] is None
    assert none["dense_attention_share"] == 1.0  # clamped to [0, 1]


def test_freeswim_step_bounds_count_both_passes_and_f():
    width = dict(heads=2, head_dim=4, ffn=16)
    f = transformer_forward_flops(6, 36, 3, 2, **width)
    d = 8
    cross = 2 * 6 * d * d * 2 + 2 * 3 * d * d * 2 + 4 * 6 * 3 * d  # q, o; k, v of 3 text tokens; attention
    assert f == 2 * (4 * 36 * d + 2 * 6 * d * d * 4 + 4 * 6 * d * 16 + cross)  # 2 layers: pairs, q/k/v/o, FFN
    # a window covering the grid: W attends every pair, so only F and the cached cross-attention differ
    b = freeswim_step_bounds((4, 6), 3, 2, 2, train_grid=(30, 52), **width)
    n = 24
    dense = transformer_forward_flops(n, n * n, 3, 2, **width)
    w_cond = transformer_forward_flops(n, n * n, 3, 2, cross=False, **width)
    assert b["window"] == (4, 6) and b["window_density"] == 1.0
    assert b["flop_bound"] == pytest.approx(2 * dense / (dense + w_cond + dense / 2)) and b["flop_bound"] < 1
    assert b["tile_bound"] == pytest.approx(b["flop_bound"])  # the plan is dense: no partial tiles to pay
    assert b["attention_share_dense"] == pytest.approx(4 * n * n * 8 * 2 / dense)
    # a window smaller than the grid: W saves pairs, the plan's partial tiles give some back
    small = freeswim_step_bounds((60, 104), 16, 1, 2, train_grid=(30, 52), heads=12, head_dim=128, ffn=8960)
    assert small["window"] == (31, 53) and 1 < small["flop_bound"] and small["tile_bound"] < small["flop_bound"]


def test_round_robin_order_and_counts():
    calls = []
    times = time_round_robin({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2)
    assert calls == ["a", "b"] * 5
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="repeats=0"):
        time_round_robin({"a": lambda: None}, repeats=0)
