"""PASS/MISS/N/A of the benchmark targets on synthetic rows: each target can pass and can miss."""

from __future__ import annotations

import pytest

from diffattn.report.targets import KERNEL_TARGETS, METHOD_TARGETS, Target, check_target, check_targets, target_lines


def _gna_row(case: str, role: str, ndim: int = 2, **metrics: float) -> dict:
    return {"case": case, "kind": "gna", "role": role, "grid": [8] * ndim, **metrics}


def _target(key: str) -> Target:
    return {t.key: t for t in KERNEL_TARGETS + METHOD_TARGETS}[key]


# (target, rows that pass, the same rows with one value just under the threshold)
CASES = {
    "a": (
        [
            _gna_row("t1", "tile_aligned", achieved_over_tile_bound=0.95),
            _gna_row("b1", "blocked", achieved_over_tile_bound=0.9),
        ],
        1,
        "achieved_over_tile_bound",
        0.89,
    ),
    "b": ([_gna_row("b1", "blocked", speedup_min=7.0), _gna_row("b2", "blocked", speedup_min=9)], 0, "speedup_min", 6),
    "c": ([_gna_row("s1", "sliding", 3, achieved_over_token_bound=0.7)], 0, "achieved_over_token_bound", 0.3),
    "d": ([{"case": "n1", "kind": "natten", "natten_over_ours_min": 25.0}], 0, "natten_over_ours_min", 19.0),
    "e": (
        [{"case": f"{m}1", "kind": m, "achieved_over_bound": 0.85} for m in ("msw", "proxy", "agent")],
        2,
        "achieved_over_bound",
        0.79,
    ),
}


@pytest.mark.parametrize("key", sorted(CASES))
def test_target_passes_then_misses(key: str) -> None:
    rows, bad, metric, value = CASES[key]
    result = check_target(_target(key), rows)
    assert result["status"] == "PASS" and len(result["rows"]) == len(rows)
    missed = [dict(r, **({metric: value} if i == bad else {})) for i, r in enumerate(rows)]
    result = check_target(_target(key), missed)
    assert result["status"] == "MISS"
    assert [c["pass"] for c in result["rows"]] == [i != bad for i in range(len(rows))]
    assert target_lines([result])[0].startswith(f"MISS ({key})")


def test_rows_outside_a_target_are_not_checked() -> None:
    rows = [_gna_row("s1", "sliding", speedup_min=1.0, achieved_over_token_bound=0.1)]  # misses (c) only
    status = {r["target"]: r["status"] for r in check_targets(KERNEL_TARGETS, rows)}
    assert status == {"a": "N/A", "b": "N/A", "c": "MISS", "d": "N/A"}
    blocked_3d = [_gna_row("b3", "blocked", 3, speedup_min=1.0, achieved_over_tile_bound=1.0)]
    status = {r["target"]: r["status"] for r in check_targets(KERNEL_TARGETS, blocked_3d)}
    assert status["b"] == "N/A" and status["a"] == "PASS"  # (b) is about 2-D only


def test_selected_row_without_the_metric_is_an_error() -> None:
    with pytest.raises(KeyError, match="speedup_min"):
        check_target(_target("b"), [_gna_row("b1", "blocked")])


def test_target_lines_format() -> None:
    t = Target("z", "x is big", "x", 2.0, lambda r: True)
    (line,) = target_lines([check_target(t, [{"case": "r1", "x": 1.5}, {"case": "r2", "x": 3.0}])])
    assert line == "MISS (z) x is big [x >= 2.0]: r1=1.50, r2=3.00"
    (line,) = target_lines([check_target(t, [])])
    assert line == "N/A (z) x is big [x >= 2.0]: no rows"


def test_a_row_whose_interval_holds_the_threshold_is_undecided() -> None:
    t = Target("z", "x is big", "x", 0.7, lambda r: True)
    rows = [
        {"case": "sure", "x": 0.9, "x_ci95": (0.8, 1.0)},  # the whole interval above: decided
        {"case": "close", "x": 0.73, "x_ci95": (0.62, 0.86)},  # passes on its point, not on its interval
        {"case": "plain", "x": 1.5},  # no interval: nothing to say
    ]
    result = check_target(t, rows)
    assert result["status"] == "PASS" and result["undecided"] == ["close"]
    (line,) = target_lines([result])
    assert line == (
        "PASS (z) x is big [x >= 0.7]: sure=0.90 [0.80-1.00], close=0.73 [0.62-0.86], plain=1.50; "
        "undecided by this run (95% interval holds 0.7): close"
    )
    missed = check_target(t, [{"case": "low", "x": 0.5, "x_ci95": (0.4, 0.6)}])
    assert missed["status"] == "MISS" and missed["undecided"] == []  # the whole interval below: decided
    assert target_lines([missed])[0].endswith("low=0.50 [0.40-0.60]")
