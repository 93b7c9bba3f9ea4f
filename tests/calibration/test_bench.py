"""The calibration benchmark's statistics: Wilson intervals and the PSNR spread (the driver itself is run by
``scripts/bench_calibrate.py --quick``; its --help is checked with every script)."""

import pytest

from diffattn.report.bench.calibrate import spread, wilson


@pytest.mark.parametrize(
    "k, n, lo, hi",
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (86, 96, 0.8188, 0.9424)],
)
def test_wilson_interval(k, n, lo, hi):
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_spread():
    s = spread([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["median"] == 2.5
    assert s["sd"] == pytest.approx(1.2910, abs=1e-4)
    half = 1.959964 * s["sd"] / 2
    assert s["ci95"] == pytest.approx([2.5 - half, 2.5 + half])
