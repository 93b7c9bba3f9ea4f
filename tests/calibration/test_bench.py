"""The calibration benchmark's PSNR spread (its Wilson intervals are `report.significance.wilson`, tested there; the
driver itself is run by ``scripts/bench_calibrate.py --quick``; its --help is checked with every script)."""

import pytest

from diffattn.report.bench.calibrate import spread


def test_spread():
    s = spread([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["median"] == 2.5
    assert s["sd"] == pytest.approx(1.2910, abs=1e-4)
    half = 1.959964 * s["sd"] / 2
    assert s["ci95"] == pytest.approx([2.5 - half, 2.5 + half])
