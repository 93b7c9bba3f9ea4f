"""Round-robin wall-clock timing: every candidate runs in turn in one process, so slow drifts of the
machine (other jobs, thermal state, frequency) hit every candidate alike."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping

import torch


def synchronizer(device: str | torch.device) -> Callable[[], None]:
    """A function that waits for queued work on ``device`` (CUDA), or does nothing (CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def time_round_robin(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    log: Callable[[str], None] | None = None,
    label: str = "",
) -> dict[str, list[float]]:
    """``warmup`` untimed rounds, then ``repeats`` timed rounds calling every fn in turn.

    Returns seconds per call, per key. ``sync`` (e.g. `synchronizer`) runs before each clock read so
    asynchronous devices are timed to completion. ``log`` gets one line per call.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be an int >= 1")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r} must be an int >= 0")
    sync = sync or (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(-warmup, repeats):
        for key, fn in fns.items():
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


def speedup_fields(dense: list[float], sparse: list[float]) -> dict:
    """Min/median of both timings and the speedups dense / sparse (min over min, median over median)."""
    d, s = TimingSummary.of(dense), TimingSummary.of(sparse)
    return {
        "dense_min_s": d.min_s,
        "dense_median_s": d.median_s,
        "sparse_min_s": s.min_s,
        "sparse_median_s": s.median_s,
        "speedup_min": d.min_s / s.min_s,
        "speedup_median": d.median_s / s.median_s,
        "dense_times_s": list(d.times_s),
        "sparse_times_s": list(s.times_s),
    }
