"""Wilson intervals and the exact McNemar test against values computed independently."""

from __future__ import annotations

import pytest

from diffattn.report.significance import mcnemar, proportion, wilson


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
