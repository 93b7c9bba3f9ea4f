"""Wilson intervals and the exact McNemar test against values computed independently."""

from __future__ import annotations

import pytest

from diffattn.report.significance import bootstrap_interval, mcnemar, proportion, wilson


@pytest.mark.parametrize(
    "k, n, low, high",
    [(74, 96, 0.6773, 0.8435), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (1, 2, 0.0945, 0.9055)],
    ids=["77pct-of-96", "none", "all", "half-of-2"],
)
def test_wilson_matches_the_formula(k, n, low, high):
    p = wilson(k, n)
    assert (p.low, p.high) == pytest.approx((low, high), abs=1e-4)
    assert p.low <= p.value <= p.high


def test_wilson_text_and_bad_input():
    assert wilson(74, 96).text() == "77% [68-84]"
    assert proportion([True, False, True, True]).k == 3
    with pytest.raises(ValueError, match="k=5, n=4"):
        wilson(5, 4)


def test_mcnemar_exact_two_sided():
    a = [True] * 10 + [False] * 2 + [True] * 20 + [False] * 4  # A alone right on 10, B alone on 2
    b = [False] * 10 + [True] * 2 + [True] * 20 + [False] * 4
    t = mcnemar(a, b)
    assert (t.only_a, t.only_b, t.n) == (10, 2, 36)
    assert t.p == pytest.approx(2 * sum(__import__("math").comb(12, i) for i in range(3)) / 2**12)  # 0.0386
    assert t.significant and t.difference == pytest.approx(8 / 36)
    same = mcnemar(a, a)
    assert same.p == 1.0 and not same.significant
    assert "not significant" in mcnemar([True, False], [False, True]).text("x", "y")
    with pytest.raises(ValueError, match="equal non-zero lengths"):
        mcnemar([True], [True, False])


def test_bootstrap_interval_covers_a_known_mean_at_the_expected_width() -> None:
    import random
    import statistics

    gen = random.Random(1)
    sample = [gen.gauss(10.0, 2.0) for _ in range(400)]
    low, high = bootstrap_interval(statistics.fmean, [sample], resamples=2000)
    assert low < 10.0 < high
    # the normal theory width, 2 * 1.96 * sigma / sqrt(n) = 0.39, to within 15%
    assert high - low == pytest.approx(2 * 1.96 * 2.0 / 20, rel=0.15)
    assert bootstrap_interval(statistics.fmean, [sample], resamples=2000) == (low, high)  # seeded
    assert bootstrap_interval(statistics.fmean, [sample], resamples=2000, seed=2) != (low, high)


def test_bootstrap_interval_redraws_each_sample_on_its_own() -> None:
    import statistics

    def ratio(a, b):
        return statistics.median(a) / statistics.median(b)

    assert bootstrap_interval(ratio, [[4.0] * 5, [2.0] * 30]) == (2.0, 2.0)  # nothing varies: no width
    low, high = bootstrap_interval(ratio, [[1.0, 2.0, 3.0, 4.0, 5.0] * 6, [2.0] * 30])
    assert low < 1.5 < high and 0.5 <= low and high <= 2.5


@pytest.mark.parametrize(
    "kwargs, match",
    [({"resamples": 10}, "resamples must be >= 100, got 10"), ({"level": 1.0}, r"level must be in \(0, 1\), got 1.0")],
    ids=["few-resamples", "level-1"],
)
def test_bootstrap_interval_rejects_bad_settings(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        bootstrap_interval(sum, [[1.0, 2.0]], **kwargs)
    with pytest.raises(ValueError, match=r"at least one item, got sizes \[2, 0\]"):
        bootstrap_interval(sum, [[1.0, 2.0], []])
