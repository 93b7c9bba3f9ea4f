"""The msw/proxy/agent rows of the kernel benchmark: bounds, rows and Markdown on the quick (32x32) cases."""

from __future__ import annotations

import pytest

from diffattn.report.bench.kernel import build_method_cases, method_markdown, run_method_case
from diffattn.report.targets import METHOD_TARGETS, check_targets


def test_full_cases_are_n16384_in_both_dtypes():
    cases = build_method_cases(quick=False)
    assert {(c.method, c.dtype) for c in cases} == {(m, d) for m in ("msw", "proxy", "agent") for d in ("fp32", "bf16")}
    assert all(c.grid == (128, 128) for c in cases)


def test_quick_rows_and_markdown():
    rows = [run_method_case(case, repeats=1) for case in build_method_cases(quick=True)]
    bounds = {r["kind"]: r["flop_bound"] for r in rows}
    assert bounds == {"msw": 4.0, "proxy": 1024 / (64 + 16), "agent": 1024 / (2 * 64)}
    for r in rows:
        assert r["dense_min_s"] > 0 and r["sparse_min_s"] > 0
        assert r["achieved_over_bound"] == pytest.approx(r["speedup_min"] / r["flop_bound"])
    targets = check_targets(METHOD_TARGETS, rows)
    (e,) = targets
    assert e["target"] == "e" and len(e["rows"]) == len(rows)
    expected = "PASS" if all(r["achieved_over_bound"] >= 0.8 for r in rows) else "MISS"
    assert e["status"] == expected
    md = method_markdown(rows, targets)
    assert all(r["case"] in md for r in rows) and f"{expected} (e)" in md


def test_old_import_path_is_the_same_module():
    """``diffattn.report.kernel_bench`` (the README's path) re-exports `diffattn.report.bench.kernel`."""
    from diffattn.report import kernel_bench
    from diffattn.report.bench import kernel

    for name in ("run_benchmark", "report_markdown", "build_method_cases", "run_method_case", "method_markdown", "log"):
        assert getattr(kernel_bench, name) is getattr(kernel, name), name
