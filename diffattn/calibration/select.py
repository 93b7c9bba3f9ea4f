"""From measurements to choices: buckets of steps, one `Cell` per (module, bucket) with its options, and the choice
per cell for a quality target (the cheapest option meeting it) or a speed target (the least quality lost at that
bound: a Lagrangian search over the cells)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from ..methods.routed import Bucket
from ..report.bounds import parts_bounds, speedup_bound
from .candidates import Candidate
from .probe import ModuleRecord
from .target import CalibrationTarget


@dataclasses.dataclass(frozen=True)
class Option:
    """A candidate (None = dense) in one cell: the worst and mean per-call error and kept mass over the cell's
    sampled calls (mass NaN where undefined), and its speedup bound at the module's grid."""

    candidate: Candidate | None
    error_max: float = 0.0
    error_mean: float = 0.0
    mass_min: float = 1.0
    mass_mean: float = 1.0
    bound: float = 1.0

    def meets(self, target: CalibrationTarget, error_cap: float | None = None) -> bool:
        """Meets the per-call targets (``error_cap`` overrides ``max_attn_error``)."""
        cap = target.max_attn_error if error_cap is None else error_cap
        if cap is not None and not self.error_max <= cap:
            return False
        return target.min_mass is None or (not math.isnan(self.mass_min) and self.mass_min >= target.min_mass)

    def loss(self, measure: str) -> float:
        """Quality lost, for speed targets: mean error, or mean mass missed."""
        return self.error_mean if measure == "error" else 1.0 - self.mass_mean


DENSE = Option(None)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (module, bucket): dense seconds of its calls (the cost weight), calls measured, options (dense first)."""

    module: str
    bucket: int
    grid: tuple[int, ...]
    extra: int
    dense_s: float
    calls: int
    steps: int
    options: tuple[Option, ...]


def make_buckets(timesteps: Sequence[float | None], count: int) -> tuple[list[Bucket], list[list[float | None]]]:
    """Split the distinct timesteps (noisiest first) into ``count`` contiguous buckets as even as possible (fewer if
    there are fewer timesteps; one if the timestep is unknown). Returns the buckets and their timesteps."""
    if not timesteps:
        return [Bucket((0, 1), (0.0, 0.0))], [[]]
    if None in timesteps:
        return [Bucket((0, len(timesteps)), (0.0, 0.0))], [list(timesteps)]
    count = min(count, len(timesteps))
    sizes = [len(timesteps) // count + (i < len(timesteps) % count) for i in range(count)]
    buckets, groups, start = [], [], 0
    for size in sizes:
        group = list(timesteps[start : start + size])
        buckets.append(Bucket((start, start + size), (float(group[0]), float(group[-1]))))  # type: ignore[arg-type]
        groups.append(group)
        start += size
    return buckets, groups


def make_cells(
    records: dict[str, ModuleRecord], groups: Sequence[Sequence[float | None]], bound_kind: str
) -> list[Cell]:
    """One `Cell` per measured module and bucket."""
    cells = []
    for module, rec in records.items():
        bounds = [speedup_bound(c.instance, rec.grid, rec.extra, bound_kind) for c in rec.candidates]
        for b, group in enumerate(groups):
            measures = [m for t in group for m in rec.measures.get(t, [])]
            dense_s = sum(rec.dense_s.get(t, 0.0) for t in group)
            steps = sum(1 for t in group if t in rec.measures)
            options = [DENSE]
            if measures:
                err = torch.stack([m.error for m in measures])  # [calls, C]
                mass = torch.stack([m.mass for m in measures])
                for i, cand in enumerate(rec.candidates):
                    options.append(Option(
                        cand, float(err[:, i].max()), float(err[:, i].mean()), float(mass[:, i].min()),
                        float(mass[:, i].mean()), bounds[i],
                    ))  # fmt: skip
            cells.append(Cell(module, b, rec.grid, rec.extra, dense_s, len(measures), steps, tuple(options)))
    return cells


def choose_quality(cells: Sequence[Cell], target: CalibrationTarget, error_cap: float | None = None) -> list[Option]:
    """Per cell, the option with the highest bound among those meeting the per-call targets (ties: lower mean
    error); dense where none does."""
    chosen = []
    for cell in cells:
        ok = [o for o in cell.options[1:] if o.meets(target, error_cap)]
        chosen.append(max(ok, key=lambda o: (o.bound, -o.error_mean)) if ok else DENSE)
    return chosen


def predicted(cells: Sequence[Cell], chosen: Sequence[Option], share: float) -> tuple[float, float]:
    """``(attention bound, end-to-end bound)`` of a choice per cell (`report.bounds.parts_bounds`)."""
    return parts_bounds([(c.dense_s, o.bound) for c, o in zip(cells, chosen)], share)


def choose_speed(
    cells: Sequence[Cell], target: CalibrationTarget, share: float, allowed: Sequence[Sequence[Option]] | None = None
) -> tuple[list[Option], bool]:
    """Per cell, options that lose the least quality (`Option.loss`, weighted by the cell's steps) while the plan's
    predicted end-to-end bound reaches ``target.min_bound``: minimise ``loss + lam * cost`` per cell, with the
    smallest ``lam`` that reaches the bound (bisection; cost = the cell's predicted seconds). ``allowed``: the
    options each cell may take (default: dense and those meeting the per-call targets). Returns the choice and
    whether the bound was reached (if not, the fastest allowed choice)."""
    assert target.min_bound is not None
    measure = target.quality_measure
    if allowed is None:
        allowed = [[DENSE, *(o for o in c.options[1:] if o.meets(target))] for c in cells]
    allowed = [list(a) or [DENSE] for a in allowed]

    def pick(lam: float) -> list[Option]:
        out = []
        for cell, opts in zip(cells, allowed):
            out.append(min(opts, key=lambda o: (cell.steps * o.loss(measure) + lam * cell.dense_s / o.bound, -o.bound)))
        return out

    fastest = [max(opts, key=lambda o: (o.bound, -o.loss(measure))) for opts in allowed]
    if predicted(cells, fastest, share)[1] < target.min_bound:
        return fastest, False
    lo, hi = 0.0, 1.0
    while predicted(cells, pick(hi), share)[1] < target.min_bound:
        hi *= 4.0
        if hi > 1e30:  # the fastest choice reaches the bound, so some finite lam does too
            return fastest, True
    for _ in range(60):
        mid = (lo + hi) / 2
        if predicted(cells, pick(mid), share)[1] >= target.min_bound:
            hi = mid
        else:
            lo = mid
    return pick(hi), True
