"""The embedded model's quality table: Wilson intervals, paired McNemar tests that say which differences are
significant (synthetic cells), and a tiny run with the two-stage rows and the upscale-only control."""

from __future__ import annotations

import json

import pytest

from diffattn.report.bench import tiny_quality as tq


def _cell(method: str, correct: list[bool], scale: int = 4) -> dict:
    from diffattn.report.significance import proportion

    p = proportion(correct)
    return {"method": method, "scale": scale, "size": 32 * scale, "tokens": 64 * scale * scale, "samples": len(correct),
            "accuracy": p.value, "wilson95": [p.low, p.high], "per_sample_correct": correct, "pattern_fid": 10.0,
            "seconds_per_image": 1.0}


def test_paired_tests_say_which_differences_are_significant():
    n = 96
    dense = [i < 60 for i in range(n)]  # 62.5%
    better = [i < 60 or i >= 80 for i in range(n)]  # right on 16 more samples, wrong on none: p = 2 / 2**16
    close = [(i < 59) or i == 90 for i in range(n)]  # one swapped: no difference to speak of
    cells = [_cell("dense", dense), _cell("2-stage gna", better), _cell("gna", close), _cell(tq.UPSCALE, better)]
    tests = {(t["a"], t["b"]): t for t in tq.paired_tests(cells)}
    assert set(tests) == {("2-stage gna", "dense"), ("gna", "dense"), (tq.UPSCALE, "dense"),
                          ("2-stage gna", tq.UPSCALE)}
    assert tests[("2-stage gna", "dense")]["significant"] and tests[("2-stage gna", "dense")]["p"] == 2 / 2**16
    assert not tests[("gna", "dense")]["significant"] and tests[("gna", "dense")]["p"] == 1.0
    assert tests[("2-stage gna", tq.UPSCALE)]["p"] == 1.0  # identical outcomes
    md = tq.markdown({"steps": 20, "guidance": 3.0, "threads": 1, "date": "today", "real_accuracy": {"4": 1.0},
                      "cells": cells, "paired": tq.paired_tests(cells)})
    assert "| 2-stage gna | 79% [70-86] | +17 pts, p = 3.1e-05 **significant** |" in md
    assert "| gna | 62% [53-72] | +0 pts, p = 1 |" in md
    significant = md.split("Significant differences")[1]
    assert "2-stage gna vs dense" in significant and "gna vs dense: +0" not in significant


@pytest.mark.slow
def test_quality_table_runs_two_stage_rows_and_the_control(tmp_path):
    out = tmp_path / "tq"
    result = tq.quality_table(per_class=1, scales=(2,), methods=("dense",), steps=2, threads=2, out=out,
                              two_stage=("gna",), batch=6)
    rows = [c["method"] for c in result["cells"]]
    assert rows == ["dense", "2-stage gna", tq.UPSCALE]
    for c in result["cells"]:
        assert c["samples"] == 6 and c["wilson95"][0] <= c["accuracy"] <= c["wilson95"][1]
        assert len(c["per_sample_correct"]) == 6 and c["pattern_fid"] >= 0
    pairs = {(t["a"], t["b"]) for t in result["paired"]}
    assert ("2-stage gna", "dense") in pairs and ("2-stage gna", tq.UPSCALE) in pairs
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["paired"] == result["paired"] and "Significant differences" in out.with_suffix(".md").read_text()
    assert (tmp_path / "tq_64px.png").stat().st_size > 0
