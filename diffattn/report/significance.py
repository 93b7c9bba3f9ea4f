"""How sure a figure is, and whether two methods differ: Wilson intervals and exact McNemar tests on
per-sample correctness (the same seeds and captions for both methods, so the samples are paired), and
percentile bootstrap intervals for statistics without a closed form (a ratio of medians of timed rounds)."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

ALPHA = 0.05
"""Significance level the reports use."""


def accuracy_text(accuracy: float, interval: Sequence[float] | None = None) -> str:
    """``"77% [68-84]"`` (``"77%"`` without an interval): an accuracy and its 95% interval, in percent."""
    return f"{accuracy:.0%}" + (f" [{interval[0] * 100:.0f}-{interval[1] * 100:.0f}]" if interval else "")


@dataclasses.dataclass(frozen=True)
class Proportion:
    """``k`` successes of ``n`` with its Wilson score interval at 95% (z = 1.96)."""

    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.k / self.n

    def text(self) -> str:
        """``"77% [68-84]"``."""
        return accuracy_text(self.value, (self.low, self.high))

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.value, "correct": self.k, "samples": self.n, "wilson95": [self.low, self.high]}


def wilson(k: int, n: int, z: float = 1.959963984540054) -> Proportion:
    """Wilson score interval of ``k`` successes in ``n`` trials (good at small n and near 0 or 1)."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at k = 0 and k = n the bound is exactly 0 and 1; rounding must not put the estimate outside it
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return Proportion(k, n, low, high)


def proportion(correct: Sequence[bool]) -> Proportion:
    """`wilson` of a list of per-sample outcomes."""
    return wilson(sum(bool(c) for c in correct), len(correct))


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """Exact McNemar test of two methods on the same samples: ``only_a`` samples right by A only, ``only_b``
    by B only; ``p`` two-sided."""

    only_a: int
    only_b: int
    n: int
    p: float

    @property
    def difference(self) -> float:
        """Accuracy of A minus accuracy of B."""
        return (self.only_a - self.only_b) / self.n

    @property
    def significant(self) -> bool:
        return self.p < ALPHA

    def text(self, a: str, b: str) -> str:
        """``"2-stage vs dense: +11 points (13 vs 2 discordant), p = 0.007: significant"``."""
        verdict = "significant" if self.significant else "not significant"
        return (f"{a} vs {b}: {self.difference * 100:+.0f} points ({self.only_a} vs {self.only_b} discordant), "
                f"p = {self.p:.3g}: {verdict} at {ALPHA}")

    def to_dict(self) -> dict[str, Any]:
        return {"only_a": self.only_a, "only_b": self.only_b, "n": self.n, "difference": self.difference,
                "p": self.p, "significant": self.significant}


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> PairedTest:
    """Exact (binomial) McNemar test of per-sample correctness ``a`` vs ``b`` over the same samples."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired outcomes need equal non-zero lengths, got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    m = only_a + only_b
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1)) / 2**m if m else 1.0
    return PairedTest(only_a, only_b, len(a), min(1.0, 2 * tail))


def bootstrap_interval(
    statistic: Callable[..., float], samples: Sequence[Sequence[Any]], resamples: int = 2000, level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)``: each sample is redrawn independently, with
    replacement and at its own size, ``resamples`` times (seeded: the same data give the same interval).
    Keep what must stay paired in one item (a round's dense and engine times as one tuple)."""
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not samples or any(len(s) == 0 for s in samples):
        raise ValueError(f"every sample needs at least one item, got sizes {[len(s) for s in samples]}")
    rng = random.Random(seed)
    values = sorted(statistic(*(rng.choices(s, k=len(s)) for s in samples)) for _ in range(resamples))
    tail = (1 - level) / 2
    return values[int(tail * resamples)], values[min(resamples - 1, math.ceil((1 - tail) * resamples) - 1)]
