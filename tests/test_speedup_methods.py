"""The msw/proxy/agent rows of ``scripts/speedup.py``: bounds, rows and Markdown on the quick (32x32) cases."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "speedup.py"


@pytest.fixture(scope="module")
def speedup():
    spec = importlib.util.spec_from_file_location("speedup_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["speedup_script"] = module
    spec.loader.exec_module(module)
    return module


def test_full_cases_are_n16384_in_both_dtypes(speedup):
    cases = speedup.build_method_cases(quick=False)
    assert {(c.method, c.dtype) for c in cases} == {(m, d) for m in ("msw", "proxy", "agent") for d in ("fp32", "bf16")}
    assert all(c.grid == (128, 128) for c in cases)


def test_quick_rows_and_markdown(speedup):
    rows = [speedup.run_method_case(case, repeats=1) for case in speedup.build_method_cases(quick=True)]
    bounds = {r["kind"]: r["flop_bound"] for r in rows}
    assert bounds == {"msw": 4.0, "proxy": 1024 / (64 + 16), "agent": 1024 / (2 * 64)}
    for r in rows:
        assert r["dense_min_s"] > 0 and r["sparse_min_s"] > 0
        assert r["achieved_over_bound"] == pytest.approx(r["speedup_min"] / r["flop_bound"])
    targets = speedup.method_targets(rows)
    assert [t["target"] for t in targets] == ["e"] and targets[0]["status"] in ("PASS", "MISS")
    md = speedup.method_markdown(rows, targets)
    assert all(r["case"] in md for r in rows) and "(e)" in md
