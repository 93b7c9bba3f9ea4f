"""The end-to-end benchmark (`diffattn.report.bench.e2e`; ``scripts/speedup.py --e2e``): configs per family,
bad input, and one tiny-scale run of the script that checks the JSON fields and the Amdahl fraction (timings
themselves are never asserted)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from diffattn.patch.presets import preset_for
from diffattn.report.bench import e2e
from diffattn.sim import amdahl

from ..helpers import run_script


class _Proc(NamedTuple):
    """``scripts/speedup.py``'s exit code and output (run in this process by `run_script`)."""

    returncode: int
    stdout: str
    stderr: str


@pytest.mark.parametrize(
    "family, scale, expected",
    [
        ("flux", 1.0, {"window": (80, 80), "stride": (16, 16)}),
        ("flux", 0.25, {"window": (20, 20), "stride": (4, 4)}),
        ("sdxl", 0.5, {"window": 16, "stride": 8}),
        ("wan", 0.25, {"window": (12, 4, 4), "stride": (1, 2, 2)}),  # frames are not scaled
    ],
    ids=["flux-full", "flux-quarter", "sdxl-half", "wan-quarter-frames-kept"],
)
def test_gna_knobs_scale_with_the_grid(family: str, scale: float, expected: dict) -> None:
    configs = {c.method: c for c in e2e.method_configs(family, scale)}
    assert list(configs) == list(e2e.METHODS)
    assert dict(configs["gna"].knobs) == expected
    assert configs["msw"].layers == preset_for("msw", family).layers  # the preset's layers, unscaled knobs


def test_proxy_window_scales_and_agent_keeps_its_ratio() -> None:
    configs = {c.method: c for c in e2e.method_configs("wan", 0.5)}
    assert dict(configs["proxy"].knobs)["window"] == (4, 8, 8)
    assert dict(configs["agent"].knobs) == dict(preset_for("agent", "wan").knobs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": 0.0}, "--scale 0.0 must be in (0, 1]"),
        ({"scale": 1.5}, "--scale 1.5 must be in (0, 1]"),
        ({"dtype": "fp8"}, "--dtype 'fp8' must be one of"),
        ({"cases": "nope"}, "no case matches 'nope'"),
    ],
    ids=["scale-zero", "scale-above-one", "dtype", "unknown-case"],
)
def test_bad_input_is_a_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        e2e.run_e2e(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_flag_without_cuda_fails_clearly() -> None:
    proc = _Proc(*run_script("speedup.py", "--e2e", "--device", "cuda", "--out", "/nonexistent"))
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr


def test_old_import_path_is_the_same_module() -> None:
    """``diffattn.report.e2e_bench`` (the README's path) re-exports `diffattn.report.bench.e2e`."""
    from diffattn.report import e2e_bench

    for name in ("run_e2e", "run_case", "method_configs", "memory_rows", "memory_growth", "report_markdown"):
        assert getattr(e2e_bench, name) is getattr(e2e, name), name
    assert (e2e_bench.METHODS, e2e_bench.GOAL, e2e_bench.DTYPES) == (e2e.METHODS, e2e.GOAL, e2e.DTYPES)


def test_memory_rows_state_both_peaks() -> None:
    rows = e2e.memory_rows("cpu", "fp32", sides=(16, 32), window=8, stride=8)
    assert [r["tokens"] for r in rows] == [256, 1024]
    for r in rows:
        assert r["peak_memory_kind"].startswith("cpu peak RSS")
        assert isinstance(r["dense_peak_bytes"], int) and isinstance(r["gna_peak_bytes"], int)
        assert r["scores_n2_fp32_bytes"] == 8 * r["tokens"] ** 2 * 4
        assert r["scores_window_fp32_bytes"] == 8 * r["tokens"] * 64 * 4
    assert "(N x4, N² x16)" in e2e.memory_growth(rows)


@pytest.mark.slow
def test_e2e_script_tiny_scale(tmp_path: Path) -> None:
    args = ["--e2e", "--cases", "wan", "--scale", "0.0625", "--repeats", "1", "--dtype", "fp32", "--out", str(tmp_path)]
    proc = _Proc(*run_script("speedup.py", *args))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "e2e.json").read_text())
    assert data["meta"]["scale"] == 0.0625 and data["meta"]["device"] == "cpu" and data["goal"] == e2e.GOAL
    assert data["complete"] and data["memory_rows"] == []  # --cases wan selects no memory row
    (case,) = data["cases"]
    assert case["case"] == "wan-480p" and case["grid"] == [9, 2, 3] and case["parameters"] > 0
    dense, *methods = case["rows"]
    assert dense["method"] == "dense" and 0 <= dense["attention_share"] <= 1
    assert [r["method"] for r in methods] == list(e2e.METHODS)
    for r in methods:
        assert len(r["step_times_s"]) == 1 and r["step_min_s"] > 0
        assert r["backend"] == "cpu" and r["sparse_calls"] == r["modules"] == 2 and r["fallback_calls"] == 0
        b = r["bounds"]
        assert b["dense_attention_share"] == r["dense_attention_share"]
        assert r["amdahl_bound"] == pytest.approx(amdahl(b["dense_attention_share"], b["attention_bound"]))
        assert r["fraction_of_amdahl"] == pytest.approx(r["speedup_median"] / r["amdahl_bound"])
        assert r["speedup_median"] == pytest.approx(dense["step_median_s"] / r["step_median_s"])
        assert r["meets_goal"] == (r["fraction_of_amdahl"] >= e2e.GOAL)
        assert math.isfinite(r["fraction_of_amdahl"]) and (r["why"] == "") == r["meets_goal"]
        assert r["peak_memory_kind"] == dense["peak_memory_kind"]
        # the timing protocol's words beside the Amdahl bound
        assert r["labels"] and set(r["labels"]) <= {"above the bound: noise", "within noise", "faster", "slower"}
        assert r["speedup_spread"][0] <= r["speedup_spread"][1]
    md = (tmp_path / "e2e.md").read_text()
    assert all(f"| {'; '.join(r['labels'])} |" in md for r in methods) and "load average" in md.lower()
    assert "Reduced scale: `--scale 0.0625`" in md
    assert all(r["config"] in md for r in methods) and md.count("of the Amdahl bound") == len(methods)
