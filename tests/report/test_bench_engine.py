"""`scripts/bench_engine.py` (the CPU engine benchmark of issue 22): a one-round smoke run writes its rows, and the
pure parts (busy fraction, targets, the not-quiet warning, the baseline loader) follow from synthetic rows."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from diffattn.methods.gna import gna_plan
from diffattn.report.bench import engine
from diffattn.report.targets import check_targets
from diffattn.report.timing import Spread, labels

from ..helpers import randn, run_script


def test_bench_engine_smoke(tmp_path: Path) -> None:
    code, stdout, err = run_script(
        "bench_engine.py", "--quick", "--cases", "tiny-32", "--rounds", "1", "--no-busy", "--baseline", "none",
        "--no-threads-study", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err[-2000:]
    data = json.loads((tmp_path / "engine.json").read_text())
    row, tiled = data["rows"]  # the case runs direct, and the same plan forced tiled beside it
    assert row["case"] == "tiny-32x32-s1" and row["engine"] == "after" and row["condition"] == "quiet"
    assert row["path"] == "direct(8x8)" and row["token_bound"] == 16.0 and row["tile_bound"] > 2.56
    assert tiled["engine"] == "after-tiled" and tiled["path"].startswith("tiled(")
    assert row["speedup_median"] > 0 and row["speedup_round_min"] <= row["speedup_round_max"]
    low, high = row["speedup_median_ci95"]
    assert row["speedup_round_min"] <= low <= row["speedup_median"] <= high <= row["speedup_round_max"]
    assert row["achieved_over_tile_bound_ci95"] == pytest.approx([low / row["tile_bound"], high / row["tile_bound"]])
    assert row["rounds"] == len(row["times_s"]) == 3  # --quick: the rounds asked for (3), no more
    ratios = [d / t for d, t in zip(row["dense_times_s"], row["times_s"])]
    assert row["labels"] == labels(row["speedup_median"], Spread.of(ratios), row["tile_bound"])
    assert len(data["load_average"]["quiet"]["before"]) == 3 and data["baseline"]["loaded"] is False
    assert "Targets" in stdout and (tmp_path / "engine.md").read_text().count("\n| quiet |") == 2
    # the busy columns, on the same row timed again busy: 3x slower engine, 2x slower dense
    busy = dict(row, condition="busy", median_s=3 * row["median_s"], dense_median_s=2 * row["dense_median_s"])
    busy["times_s"] = [3 * t for t in row["times_s"]]
    busy["dense_times_s"] = [2 * t for t in row["dense_times_s"]]
    busy["speedup_median"] = busy["dense_median_s"] / busy["median_s"]
    data["rows"].append(busy)
    engine.add_busy_keeps(data["rows"])
    low, high = busy["busy_keeps_ci95"]
    assert low <= 2 / 3 <= high  # the same rounds, scaled: the point is one of the redraws
    lost = f"{row['dense_median_s'] * 1e3:+.1f} / {2 * row['median_s'] * 1e3:+.1f} |"
    (line,) = [x for x in engine.markdown(data).splitlines() if x.startswith("| busy |")]
    assert line.endswith(f"| {2 / 3:.2f} [{low:.2f}-{high:.2f}] | {lost}"), line


def test_a_case_run_direct_or_as_strips_is_timed_tiled_beside_it(monkeypatch) -> None:
    (case,) = [c for c in engine.build_cases(True) if c.name == "tiny-64x64-s1"]
    fns = engine.engines(case, None, False)
    assert list(fns) == ["dense", "after", "after-tiled"]
    rows = engine.case_rows(case, "quiet", {name: [1.0] for name in fns})
    assert [(r["engine"], r["path"]) for r in rows] == [("after", "direct(8x8)"), ("after-tiled", "tiled(4x8)")]
    monkeypatch.setattr(engine.cpu.cpu_direct, "library", lambda: None)  # a machine without the direct kernel
    assert "after-tiled" not in engine.engines(case, None, False)  # 2 MB of keys per batch item: tiled
    monkeypatch.setattr(engine.cpu, "STRIPS_MIN_BYTES", 0)
    fns = engine.engines(case, None, False)
    assert list(fns) == ["dense", "after", "after-tiled"]
    rows = engine.case_rows(case, "quiet", {name: [1.0] for name in fns})
    assert [(r["engine"], r["path"]) for r in rows] == [("after", "strips(4x8)"), ("after-tiled", "tiled(4x8)")]


def _row(case: str, engine_: str, condition: str, speedup: float, dense_s: float = 1.0) -> dict:
    return {"case": case, "engine": engine_, "condition": condition, "speedup_median": speedup,
            "dense_median_s": dense_s, "median_s": dense_s / speedup,
            "achieved_over_token_bound": speedup / 64, "achieved_over_tile_bound": speedup / 24.8}  # fmt: skip


def test_busy_fraction_and_targets_follow_from_the_rows() -> None:
    rows = [
        _row("tiny-64x64-s1", "after", "quiet", 10.0),
        _row("tiny-64x64-s1", "after", "busy", 6.0),
        _row("tiny-64x64-s1", "before", "quiet", 4.0),
        _row("tiny-64x64-s1", "before", "busy", 1.0),
        _row("tiny-32x32-s1", "after", "quiet", 1.9),
        _row("tiny-32x32-s1", "after", "busy", 1.8),
        _row("tiny-32x32-s1", "before", "quiet", 2.5, dense_s=0.008),  # 3.2 ms
        _row("tiny-32x32-s1", "before", "busy", 1.5, dense_s=0.020),  # 13.3 ms
    ]
    engine.add_busy_keeps(rows)
    assert [r.get("busy_keeps") for r in rows] == [None, 0.6, None, 0.25, None, 1.8 / 1.9, None, 0.6]
    assert not any("busy_keeps_ci95" in r for r in rows)  # rows without their rounds: no interval
    # a short call that keeps little of its speedup can still lose less time than dense (12 ms against 10.1)
    assert rows[-1]["dense_busy_lost_s"] == pytest.approx(0.012)
    assert rows[-1]["busy_lost_s"] == pytest.approx(0.020 / 1.5 - 0.008 / 2.5)
    assert "busy_lost_s" not in rows[0]
    status = {t["target"]: t["status"] for t in check_targets(engine.ENGINE_TARGETS, rows)}
    assert status == {"32": "MISS", "64": "PASS", "128": "N/A", "s1": "N/A", "blocked": "N/A", "busy": "MISS"}


def test_the_report_says_when_the_quiet_rows_were_not_quiet() -> None:
    payload = {"meta": {"nproc": 2}, "load_average": {"quiet": {"before": [0.3, 1, 1], "after": [0.2, 1, 1]}}}
    assert engine.not_quiet(payload) == ""
    payload["load_average"]["quiet"]["after"] = [2.2, 1, 1]  # the benchmark's own 2 threads: still quiet
    assert engine.not_quiet(payload) == ""
    payload["load_average"]["quiet"]["after"] = [3.5, 1, 1]
    assert "load average 3.50 on 2 cores" in engine.not_quiet(payload)
    payload["load_average"]["quiet"] = {"before": [1.2, 1, 1], "after": [1.5, 1, 1]}  # busy before it started
    assert "load average 1.50 on 2 cores" in engine.not_quiet(payload)


def test_the_baseline_is_the_engine_before_issue_22() -> None:
    module, why = engine.load_baseline(engine.BASELINE_REF)
    if module is None:  # not a git checkout (an sdist, a copied tree): the benchmark says so and skips 'before'
        assert why
        return
    grid = (9, 11)
    plan = gna_plan(grid, (3, 3), (1, 1), (1, 1))
    q, k, v = (randn(2, 99, 2, 8, seed=s) for s in range(3))
    old, old_lse = module.block_sparse_attention_cpu(q, k, v, plan)
    from diffattn.kernels.cpu import block_sparse_attention_cpu

    new, new_lse = block_sparse_attention_cpu(q, k, v, plan)
    torch.testing.assert_close(old, new, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(old_lse, new_lse, atol=2e-5, rtol=2e-5)
    assert engine.load_baseline("no-such-ref-xyz")[0] is None


def test_cheap_cases_get_more_rounds_up_to_a_cap() -> None:
    assert engine.case_rounds(3.0, 7, budget_s=5.0) == 7  # slow rounds: the rounds asked for
    assert engine.case_rounds(0.3, 7, budget_s=5.0) == 16  # 5 s of 0.3 s rounds
    assert engine.case_rounds(0.01, 7, budget_s=5.0) == engine.MAX_ROUNDS
    assert engine.case_rounds(0.01, 7, budget_s=0.0) == 7
    many = engine.MAX_ROUNDS + 5
    assert engine.case_rounds(0.01, many, budget_s=5.0) == many  # never fewer than asked


def test_a_busy_keeps_whose_interval_holds_the_target_is_undecided() -> None:
    # quiet 8 / 3 ms; busy dense 16 ms, engine calls a scheduler tick apart (8 or 12 ms): the median of the
    # rounds sits between the clusters (keeps 0.6), and redrawn rounds put it on either (0.5 or 0.75)
    quiet = _row("tiny-32x32-s1", "after", "quiet", 8 / 3, dense_s=0.008)
    quiet.update(dense_times_s=[0.008] * 40, times_s=[0.003] * 40)
    busy = _row("tiny-32x32-s1", "after", "busy", 1.6, dense_s=0.016)
    busy.update(dense_times_s=[0.016] * 40, times_s=[0.008, 0.012] * 20)
    rows = [quiet, busy]
    engine.add_busy_keeps(rows)
    assert busy["busy_keeps"] == pytest.approx(0.6)
    low, high = busy["busy_keeps_ci95"]
    assert low == pytest.approx(0.5) and high == pytest.approx(0.75)
    (result,) = [t for t in check_targets(engine.ENGINE_TARGETS, rows) if t["target"] == "busy"]
    assert result["status"] == "MISS" and result["undecided"] == ["tiny-32x32-s1"]


def test_calibration_fits_the_tiled_and_the_direct_terms() -> None:
    result = engine.calibrate(repeats=1, configs=((16, 3, 1), (24, 5, 1), (32, 8, 1), (20, 16, 1)))
    assert set(result["fit"]) == {f.name for f in dataclasses.fields(engine.cpu.CpuCostModel)}
    assert all(math.isfinite(v) and v >= 0 for v in result["fit"].values())
    if engine.cpu.cpu_direct.library() is not None:
        assert [s["config"] for s in result["direct_samples"]] == [[16, 3, 1], [24, 5, 1], [32, 8, 1], [20, 16, 1]]
        assert [s["score_vectors"] for s in result["direct_samples"]] == [3, 5, 4, 16]
        assert result["fit"]["direct_query_s"] + result["fit"]["direct_key_s"] > 0


def test_calibration_without_the_direct_kernel_keeps_its_direct_terms(monkeypatch) -> None:
    monkeypatch.setattr(engine.cpu.cpu_direct, "library", lambda: None)
    result = engine.calibrate(repeats=1, configs=((16, 3, 1), (24, 5, 1), (32, 8, 1)))
    assert result["direct_samples"] == []
    assert result["fit"]["direct_key_s"] == engine.cpu.CpuCostModel().direct_key_s
