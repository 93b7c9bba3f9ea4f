"""Smoke test of ``scripts/speedup.py --quick``: it runs, and writes sane JSON and Markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from diffattn.kernels import batch_item_bytes, get_backend
from diffattn.methods.gna import gna_plan, gna_q_tile
from diffattn.report.bench.kernel import DTYPES
from diffattn.report.timing import Spread, labels
from diffattn.sim import plan_bound, simulate

from ..helpers import run_script


def test_speedup_quick(tmp_path: Path) -> None:
    code, stdout, err = run_script("speedup.py", "--quick", "--no-natten", "--out", str(tmp_path))
    assert code == 0, err[-2000:]
    data = json.loads((tmp_path / "speedup.json").read_text())
    rows = data["rows"]
    names = [r["case"] for r in rows]
    # GNA 2-D: 4 strides x 2 dtypes; 3-D: 2 strides x 2 dtypes; no NATTEN row
    assert len(rows) == 12, names
    assert sum(r["grid"] == [32, 32] for r in rows) == 8
    assert sum(r["grid"] == [4, 8, 8] for r in rows) == 4
    assert {r["dtype"] for r in rows} == {"fp32", "bf16"}
    assert all(r["kind"] == "gna" for r in rows)
    # msw, proxy and agent, each in both dtypes, with their own FLOP bounds
    method_rows = data["method_rows"]
    assert sorted((r["kind"], r["dtype"]) for r in method_rows) == sorted(
        (m, d) for m in ("msw", "proxy", "agent") for d in ("fp32", "bf16")
    )
    assert all(r["flop_bound"] == 4.0 for r in method_rows if r["kind"] == "msw")
    for r in rows:
        for key in ("dense_min_s", "dense_median_s", "sparse_min_s", "sparse_median_s", "speedup_min"):
            assert r[key] > 0, (r["case"], key)
        assert r["dense_min_s"] <= r["dense_median_s"] and r["sparse_min_s"] <= r["sparse_median_s"]
        assert r["token_bound"] >= 1 and r["tile_bound"] >= 1, r["case"]
        assert r["tile_bound"] <= r["token_bound"] + 1e-9, r["case"]  # the kernel never does less work
        sim = simulate(tuple(r["grid"]), tuple(r["window"]), tuple(r["stride"]))  # bounds come from diffattn.sim
        assert r["token_bound"] == sim.token_bound, r["case"]
        resolved = (sim.grid, sim.window, sim.stride, sim.dilation)
        shape = (r["batch"], math.prod(sim.grid), r["heads"], r["head_dim"])
        q = torch.empty(shape, dtype=DTYPES[r["dtype"]], device="meta")
        runs = gna_plan(*resolved, gna_q_tile(*resolved, get_backend("cpu"), batch_item_bytes(q)))  # what cpu runs
        assert r["tile_bound"] == plan_bound(runs), r["case"]
        assert r["repeats"] == 2 and r["threads"] >= 1
        # the protocol's words, against the bound of what was timed (ours: its plan's tiles)
        bound = r["token_bound"] if r["kind"] == "natten" else r["tile_bound"]
        assert r["labels"] == labels(r["speedup_median"], Spread.of(ratios(r)), bound), r["case"]
    for r in method_rows:
        assert r["labels"] == labels(r["speedup_median"], Spread.of(ratios(r)), r["flop_bound"]), r["case"]
    meta = data["meta"]
    assert meta["quick"] and meta["nproc"] >= 1 and meta["torch"]
    targets = data["targets"] + data["method_targets"]
    assert [t["target"] for t in targets] == ["a", "b", "c", "d", "e"]
    for t in targets:  # each status follows from the rows' own values (the rule itself: test_report_targets.py)
        values = [c[t["metric"]] for c in t["rows"]]
        expected = "N/A" if not values else "PASS" if min(values) >= t["threshold"] else "MISS"
        assert t["status"] == expected, t
    # per dtype: 2-D strides 2, 4 (tile-aligned), 8 (blocked), 1 (sliding); 3-D sliding and blocked
    assert [len(t["rows"]) for t in targets] == [8, 2, 4, 0, 6]
    md = (tmp_path / "speedup.md").read_text()
    assert md.count("\n| ") >= 20 and all(n in md for n in names + [r["case"] for r in method_rows])
    assert all(f"| {'; '.join(r['labels'])} |" in md for r in rows + method_rows)
    assert "Targets" in stdout


def ratios(row: dict) -> list[float]:
    """The per-round speedups of a row (its rounds ran dense and sparse back to back)."""
    return [d / s for d, s in zip(row["dense_times_s"], row["sparse_times_s"])]
