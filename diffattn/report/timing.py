"""The one timing protocol behind every speedup diffattn prints.

1. An untimed warm-up per configuration (first calls pay one-off costs: allocations, plan caches).
2. Rounds interleaved A B A B ..., at least `MIN_ROUNDS`, in one process, so slow drifts of the machine
   (other jobs, thermal state, frequency) hit every configuration alike.
3. Per configuration the median and the min-max spread of the per-round times (`Spread`); a speedup is
   the median of the per-round paired ratios, with their min-max (`Speedup`): pairing cancels drifts
   slower than a round.
4. Every speedup sits beside its Amdahl bound (from the measured dense attention share) and its
   attention-only bound, as a fraction of the bound; the bounds come from `diffattn.report.bounds`.
5. A speedup above its bound, or whose spread includes 1.0, is labelled in words (`labels`): "above the
   bound: noise" and "within noise"; the rest are "faster" or "slower". People get numbers rounded to
   2 decimals (`Speedup.text`); JSON keeps the raw values (`Speedup.to_dict`).
6. The machine's load average is recorded beside every timing (`load_average`).

`time_round_robin` and `speedup_fields` are the lower-level pieces the kernel benchmarks use.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

MIN_ROUNDS = 3
"""Fewest interleaved timed rounds the protocol accepts: with fewer there is no spread to speak of."""

WITHIN_NOISE = "within noise"
ABOVE_BOUND = "above the bound: noise"
FASTER = "faster"
SLOWER = "slower"


def synchronizer(device: str | torch.device) -> Callable[[], None]:
    """A function that waits for queued work on ``device`` (CUDA), or does nothing (CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def load_average() -> tuple[float, float, float] | None:
    """The machine's 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except (OSError, AttributeError):
        return None


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} must be an int >= {low}")
    return value


def time_round_robin(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    log: Callable[[str], None] | None = None,
    label: str = "",
    prepare: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """``warmup`` untimed rounds, then ``repeats`` timed rounds calling every fn in turn.

    Returns seconds per call, per key. ``sync`` (e.g. `synchronizer`) runs before each clock read so
    asynchronous devices are timed to completion. ``log`` gets one line per call. ``prepare[key]``,
    when given, runs untimed before each call of ``fns[key]`` (e.g. installing that key's patch).
    """
    _check_int("repeats", repeats, 1)
    _check_int("warmup", warmup, 0)
    sync = sync or (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(-warmup, repeats):
        for key, fn in fns.items():
            if prepare is not None and key in prepare:
                prepare[key]()
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            dt = time.perf_counter() - t0
            if rep >= 0:
                times[key].append(dt)
            if log is not None:
                what = "warm-up" if rep < 0 else f"rep {rep + 1}/{repeats}"
                log(f"  {label} {what} {key}: {dt:.3f} s")
    return times


def range_text(bounds: Sequence[float] | None, fmt: str = ".2f") -> str:
    """``"[1.10-1.40]"``: a ``(min, max)`` (or an interval), rounded for people; ``""`` for None."""
    return f"[{bounds[0]:{fmt}}-{bounds[1]:{fmt}}]" if bounds else ""


@dataclasses.dataclass(frozen=True)
class Spread:
    """Median and min-max of repeated measurements; the raw values are kept."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = tuple(float(v) for v in values)
        if not values:
            raise ValueError("no values to summarize")
        return cls(statistics.median(values), min(values), max(values), values)

    def includes(self, x: float) -> bool:
        return self.low <= x <= self.high

    def scaled(self, factor: float) -> Spread:
        """The same spread in other units (e.g. seconds -> milliseconds)."""
        return Spread.of([v * factor for v in self.values])

    def text(self, fmt: str = ".2f", unit: str = "") -> str:
        """``"1.23 s [1.10-1.40]"``: the median and the min-max, rounded for people."""
        return f"{self.median:{fmt}}{unit} {range_text((self.low, self.high), fmt)}"

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "values": list(self.values)}


@dataclasses.dataclass(frozen=True)
class Rounds:
    """Per configuration, the timed value of each interleaved round (seconds unless a fn said otherwise),
    and the load average before and after the rounds."""

    times: dict[str, tuple[float, ...]]
    load_before: tuple[float, float, float] | None
    load_after: tuple[float, float, float] | None

    def speedup(self, reference: str, key: str, amdahl_bound: float | None = None,
                attention_bound: float | None = None) -> Speedup:
        """``reference`` time / ``key`` time per round, beside the bounds (see `Speedup`)."""
        return Speedup.paired(self.times[reference], self.times[key], amdahl_bound, attention_bound,
                              self.load_before, self.load_after)

    def to_dict(self) -> dict[str, Any]:
        return {"times": {k: list(v) for k, v in self.times.items()},
                "load_average_before": self.load_before, "load_average_after": self.load_after}


def load_text(before: Sequence[float] | None, after: Sequence[float] | None) -> str:
    """``"load average 1.20 -> 1.35 (1 min)"``, or that none was available."""
    if before is None or after is None:
        return "load average unavailable"
    return f"load average {before[0]:.2f} -> {after[0]:.2f} (1 min, {os.cpu_count()} CPUs)"


def interleaved_rounds(
    fns: Mapping[str, Callable[[], float | None]],
    rounds: int = MIN_ROUNDS,
    *,
    warmup: Mapping[str, Callable[[], object]] | None = None,
    sync: Callable[[], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Rounds:
    """The protocol's measurement: one untimed warm-up per configuration (``warmup[key]`` when given, else
    ``fns[key]`` itself), then ``rounds`` (>= `MIN_ROUNDS`) rounds calling every fn in turn.

    A fn may return the time it measured itself (e.g. the median step time of a pipeline call, leaving
    its setup untimed); one that returns None is timed by the wall clock around the call.
    Round ``r`` may differ between rounds (e.g. a different batch of samples): each fn is called as is.
    """
    _check_int("rounds", rounds, MIN_ROUNDS)
    sync = sync or (lambda: None)
    for key, fn in fns.items():
        (warmup or {}).get(key, fn)()
    load_before = load_average()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for key, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            own = fn()
            sync()
            value = time.perf_counter() - t0 if own is None else float(own)
            times[key].append(value)
            if log is not None:
                log(f"round {r + 1}/{rounds} {key}: {value:.4g} s")
    return Rounds({k: tuple(v) for k, v in times.items()}, load_before, load_average())


def labels(value: float, spread: Spread | None, bound: float | None) -> list[str]:
    """The words a speedup ``value`` needs: "above the bound: noise" if it exceeds ``bound`` (no method can
    beat its bound: the excess is measurement noise), "within noise" if its ``spread`` includes 1.0;
    otherwise "faster" or "slower" than the reference."""
    words = []
    if bound is not None and value > bound:
        words.append(ABOVE_BOUND)
    if spread is not None and spread.includes(1.0):
        words.append(WITHIN_NOISE)
    if not words:
        words.append(FASTER if value > 1.0 else SLOWER if value < 1.0 else WITHIN_NOISE)
    return words


@dataclasses.dataclass(frozen=True)
class Speedup:
    """A speedup measured over interleaved rounds, beside its bounds.

    spread: the per-round ratios reference / method (median = the speedup, min-max = its spread);
    amdahl_bound: the end-to-end bound from the measured dense attention share (None: not applicable);
    attention_bound: the bound of the attention part alone; the speedup is judged against
    ``amdahl_bound`` when it is given, else against ``attention_bound``.
    """

    spread: Spread
    amdahl_bound: float | None = None
    attention_bound: float | None = None
    load_before: tuple[float, float, float] | None = None
    load_after: tuple[float, float, float] | None = None

    @classmethod
    def paired(cls, reference: Sequence[float], method: Sequence[float], amdahl_bound: float | None = None,
               attention_bound: float | None = None, load_before: Any = None, load_after: Any = None) -> Speedup:
        """From per-round times of the reference and the method (the same number of rounds, paired)."""
        if len(reference) != len(method) or not reference:
            raise ValueError(f"paired rounds need equal non-zero counts, got {len(reference)} and {len(method)}")
        ratios = [r / m if m > 0 else float("inf") for r, m in zip(reference, method)]
        return cls(Spread.of(ratios), amdahl_bound, attention_bound, load_before, load_after)

    @property
    def value(self) -> float:
        return self.spread.median

    @property
    def bound(self) -> float | None:
        """The bound the speedup is judged against."""
        return self.amdahl_bound if self.amdahl_bound is not None else self.attention_bound

    @property
    def fraction_of_bound(self) -> float | None:
        return None if self.bound is None else self.value / self.bound

    @property
    def labels(self) -> list[str]:
        return labels(self.value, self.spread, self.bound)

    @property
    def verdict(self) -> str:
        return "; ".join(self.labels)

    def text(self, bound_name: str | None = None) -> str:
        """``"1.42x [1.30-1.50], Amdahl bound 1.67x (0.85 of it), attention-only bound 16.00x: faster"``."""
        parts = [f"{self.value:.2f}x {range_text((self.spread.low, self.spread.high))}"]
        if self.amdahl_bound is not None:
            parts.append(f"{bound_name or 'Amdahl bound'} {self.amdahl_bound:.2f}x "
                         f"({self.value / self.amdahl_bound:.2f} of it)")
        if self.attention_bound is not None:
            of = "" if self.amdahl_bound is not None else f" ({self.value / self.attention_bound:.2f} of it)"
            parts.append(f"attention-only bound {self.attention_bound:.2f}x{of}")
        return ", ".join(parts) + f": {self.verdict}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "speedup": self.value,
            "speedup_min": self.spread.low,
            "speedup_max": self.spread.high,
            "per_round": list(self.spread.values),
            "amdahl_bound": self.amdahl_bound,
            "attention_bound": self.attention_bound,
            "fraction_of_bound": self.fraction_of_bound,
            "labels": self.labels,
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
        }


@dataclasses.dataclass(frozen=True)
class TimingSummary:
    """Min and median of a list of timings in seconds (min is the least noisy estimate of the cost)."""

    min_s: float
    median_s: float
    times_s: tuple[float, ...]

    @classmethod
    def of(cls, times: list[float] | tuple[float, ...]) -> TimingSummary:
        if not times:
            raise ValueError("no timings to summarize")
        return cls(min(times), statistics.median(times), tuple(times))


def speedup_fields(dense: list[float], sparse: list[float], bound: float | None = None) -> dict:
    """Min/median of both timings, the speedups dense / sparse (min over min, median over median), the
    per-round paired speedups' min-max, and the protocol's words against ``bound`` (see `labels`)."""
    d, s = TimingSummary.of(dense), TimingSummary.of(sparse)
    out = {
        "dense_min_s": d.min_s,
        "dense_median_s": d.median_s,
        "sparse_min_s": s.min_s,
        "sparse_median_s": s.median_s,
        "speedup_min": d.min_s / s.min_s,
        "speedup_median": d.median_s / s.median_s,
        "dense_times_s": list(d.times_s),
        "sparse_times_s": list(s.times_s),
    }
    if len(dense) == len(sparse):
        paired = Speedup.paired(dense, sparse, attention_bound=bound)
        out["speedup_spread"] = [paired.spread.low, paired.spread.high]
        out["labels"] = labels(out["speedup_median"], paired.spread, bound)
        out["load_average"] = load_average()
    return out
