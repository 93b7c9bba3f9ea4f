"""`Probe`: the method calibration installs (through `apply_attention`, like any method) for its dense run. Each
self-attention call returns dense attention, timed, and on the side measures every candidate of its module on a
sample of its queries (`measure.measure_call`), into `ModuleRecord`s."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from torch import Tensor

from ..methods import AttendCall, AttentionMethod, get_method
from ..methods.base import call_generator
from .candidates import Candidate, candidates_for
from .measure import CallMeasure, batch_rows, measure_call, sample_positions


class BudgetExhausted(Exception):
    """Raised from inside a generation when ``budget_s`` runs out; calibration keeps what it measured."""


@dataclasses.dataclass
class ModuleRecord:
    """What one module showed during the dense run: its grid, text keys and candidates, and per timestep
    (scheduler units; None if unknown) its calls' measurements and dense attention seconds."""

    grid: tuple[int, ...]
    extra: int
    candidates: list[Candidate]
    measures: dict[float | None, list[CallMeasure]] = dataclasses.field(default_factory=dict)
    dense_s: dict[float | None, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """queries: sampled queries per call (all heads); rows: batch rows measured per call; seed: seeds the query
    samples (with the module name and timestep); methods: candidate methods; blocked: add GNA's blocked windows;
    inputs_per_step: how many of the inputs are measured at each step (they take turns; None = all): the cost of
    measuring grows with the calls measured, while more inputs still widen what the steps' samples cover."""

    queries: int = 64
    rows: int = 2
    seed: int = 0
    methods: tuple[str, ...] = ("gna",)
    blocked: bool = False
    inputs_per_step: int | None = 2

    def __post_init__(self) -> None:
        for name in ("queries", "rows", "inputs_per_step"):
            value = getattr(self, name)
            if value is None and name == "inputs_per_step":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                none = " or None" if name == "inputs_per_step" else ""
                raise ValueError(f"{name}={value!r} must be an int >= 1{none}")


class Probe(AttentionMethod):
    """Dense attention that measures the candidates on the side. Not registered: calibration builds it."""

    name = "calibration-probe"
    Config = ProbeConfig

    def __init__(self, config: ProbeConfig, sync: Callable[[], None] = lambda: None, deadline: float | None = None):
        super().__init__(config)
        self.dense = get_method("dense")(get_method("dense").Config())
        self.records: dict[str, ModuleRecord] = {}
        self.sync = sync
        self.deadline = deadline
        #: seconds spent measuring (inside denoiser steps: subtracted from the step time for the attention share)
        self.overhead_s = 0.0
        self.calls = 0
        #: set by the driver: the input being generated, out of ``inputs``
        self.input_index = 0
        self.inputs = 1
        self._rank: dict[float | None, int] = {}  # timestep -> its step index (order of first appearance)

    def measures(self, timestep: float | None) -> bool:
        """Whether calls of the current input at ``timestep`` are measured: inputs take turns, step by step."""
        per = self.config.inputs_per_step
        if per is None or per >= self.inputs:
            return True
        stride = -(-self.inputs // per)
        rank = self._rank.setdefault(timestep, len(self._rank))
        return (self.input_index + rank) % stride == 0

    def attend(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        """q, k, v ``[B, N, H, D]``: dense attention, and the candidates measured on a sample of the queries."""
        self.sync()
        t0 = time.perf_counter()
        out = self.dense.attend(q, k, v, call)
        self.sync()
        t1 = time.perf_counter()
        grid = tuple(call.grid)
        extra = 0 if call.extra_k is None else int(call.extra_k.shape[1])
        rec = self.records.get(call.layer)
        if rec is None:
            cfg = self.config
            rec = self.records[call.layer] = ModuleRecord(grid, extra, candidates_for(grid, cfg.methods, cfg.blocked))
        elif rec.grid != grid:
            raise ValueError(
                f"{call.layer} attended a {rec.grid} grid, then {grid}: calibrate with inputs of one size "
                "(a plan's measurements hold for the size they were taken at)"
            )
        rec.dense_s[call.timestep] = rec.dense_s.get(call.timestep, 0.0) + (t1 - t0)
        if self.measures(call.timestep):
            gen = call_generator(self.config.seed, call.layer, call.timestep)
            positions = sample_positions(q.shape[1], self.config.queries, gen, q.device)
            measure = measure_call(q, k, v, call, rec.candidates, positions, batch_rows(q.shape[0], self.config.rows))
            rec.measures.setdefault(call.timestep, []).append(measure)
            self.calls += 1
        self.sync()
        now = time.perf_counter()
        self.overhead_s += now - t1
        if self.deadline is not None and now > self.deadline:
            raise BudgetExhausted
        return out

    def timesteps(self) -> list[float | None]:
        """Every timestep seen, noisiest first (None, if seen, alone)."""
        seen = {t for rec in self.records.values() for t in rec.dense_s}
        known = sorted((t for t in seen if t is not None), reverse=True)
        return known + ([None] if None in seen else [])
