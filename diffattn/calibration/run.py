"""`calibrate`: one dense run over the inputs with the `Probe` installed, then a choice per (module, bucket of
steps), a `Plan`, and optionally a PSNR search and a verification against the uniform configuration."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..methods.routed import Bucket, ModelSignature, Plan, PlanEntry
from ..models.denoisers import denoisers_of
from ..patch import apply_attention
from ..report.quality import psnr
from ..report.runner import StepTimer
from ..report.timing import synchronizer
from .candidates import CANDIDATE_METHODS
from .probe import BudgetExhausted, Probe, ProbeConfig
from .select import DENSE, Cell, Option, choose_quality, choose_speed, make_buckets, make_cells, predicted
from .target import CalibrationTarget

logger = logging.getLogger("diffattn")

#: prompts when a text pipeline gets no inputs (the embedded model uses its own captions)
DEFAULT_PROMPTS = (
    "a red fox in the snow, highly detailed",
    "a city street at night in the rain, neon signs",
    "a bowl of fruit on a wooden table, soft light",
    "a portrait of an old fisherman, close-up",
)
#: error thresholds the PSNR search tries (plans get cheaper as the threshold grows)
PSNR_LADDER = (0.005, 0.01, 0.02, 0.035, 0.05, 0.08, 0.12, 0.2, 0.35, 0.6)


@dataclasses.dataclass
class _Run:
    """What the dense run left: the probe, dense outputs per input, step seconds, inputs completed."""

    probe: Probe
    outputs: list[Tensor]
    step_s: float
    done: int
    stopped: bool
    seconds: float
    #: modules the probe was installed on that it never measured (their calls fell back, or never ran)
    unmeasured: list[str] = dataclasses.field(default_factory=list)


def calibrate(
    pipe: Any,
    inputs: Sequence[str] | Sequence[dict[str, Any]] | None = None,
    *,
    target: Any = "max_attn_error=0.05",
    methods: Sequence[str] = ("gna",),
    step_buckets: int = 3,
    budget_s: float | None = None,
    seed: int = 0,
    verify: bool = False,
    call_kwargs: dict[str, Any] | None = None,
    queries: int = 64,
    batch_rows: int = 2,
    inputs_per_step: int | None = 2,
    backend: str = "auto",
    verify_inputs: Sequence[str] | None = None,
    report_dir: str | Path = "calibration_report",
    progress: bool = True,
) -> Plan:
    """Find, per self-attention module and bucket of denoising steps, the cheapest attention meeting ``target``.

    Args:
        pipe: a diffusers pipeline, or a bare denoiser (then ``inputs`` are its forward's keyword dicts).
        inputs: prompts, or call keyword dicts (any pipeline: class-conditional, image-to-image, video); default:
            a few built-in prompts (the embedded model: one caption per class). Input ``i`` is generated with
            ``torch.Generator().manual_seed(seed + i)`` unless its dict has a ``generator``.
        target: a `CalibrationTarget`, a dict of its fields or its text form (``"max_attn_error=0.05"``,
            ``"min_mass=0.9,min_bound=2"``).
        methods: candidate families, from ``("gna", "msw", "proxy")``.
        step_buckets: stretches of the schedule that get their own choice (by timestep; fewer if fewer steps ran).
        budget_s: stop measuring when this many seconds have passed and return the best plan so far (its notes
            say so); None = no limit.
        seed: seeds the inputs' noise and the query samples.
        verify: run `diffattn.report.compare` on held-out inputs (``verify_inputs``; default: the calibration prompts
            with seeds ``seed + 1000 + i``): dense, the plan, and the uniform GNA window with the nearest predicted
            bound; the report goes to ``report_dir``.
        call_kwargs: keyword arguments every input gets (size, steps, guidance, ...).
        queries, batch_rows: sampled queries (all heads) and batch rows per measured call.
        inputs_per_step: inputs measured at each step (they take turns step by step; None = every input).
        backend: the kernel backend of the plan's verification and the dense run.
        progress: tqdm progress bars.

    Returns:
        A `Plan`: ``apply_attention(pipe, plan)``, ``plan.save("plan.json")``, ``print(plan.describe())``.
    """
    goal = CalibrationTarget.of(target)
    if isinstance(step_buckets, bool) or not isinstance(step_buckets, int) or step_buckets < 1:
        raise ValueError(f"step_buckets={step_buckets!r} must be an int >= 1")
    if isinstance(pipe, nn.Module) and (goal.min_psnr is not None or verify):
        raise ValueError("min_psnr and verify need a pipeline (images); a bare denoiser gets per-call targets only")
    m = measure(
        pipe, inputs, methods=methods, seed=seed, call_kwargs=call_kwargs, queries=queries, batch_rows=batch_rows,
        inputs_per_step=inputs_per_step, backend=backend, budget_s=budget_s, progress=progress,
        blocked=goal.bound == "tile",
    )  # fmt: skip
    plan, cells = plan_from(m, goal, step_buckets=step_buckets, backend=backend, progress=progress)
    if verify:
        from .verify import verify_plan

        out = Path(report_dir)
        plan = verify_plan(pipe, plan, cells, m.share, m.calls, verify_inputs, seed, backend, out, progress)
    return plan


@dataclasses.dataclass
class Measurement:
    """One dense run over the inputs with the probe: what `plan_from` turns into plans (any number of targets).

    calls: the inputs' call keyword dicts; run: the probe and the dense outputs; budget_s / deadline: the budget."""

    pipe: Any
    calls: list[dict[str, Any]]
    run: _Run
    config: ProbeConfig
    budget_s: float | None
    deadline: float | None

    @property
    def share(self) -> float:
        """Dense attention's share of the denoiser steps (measuring time left out)."""
        attention = sum(s for rec in self.run.probe.records.values() for s in rec.dense_s.values())
        steps = self.run.step_s - self.run.probe.overhead_s
        return min(1.0, attention / steps) if steps > 0 else 1.0

    def cells(self, step_buckets: int, bound: str) -> tuple[list[Bucket], list[Cell], list[str]]:
        """The buckets, the (module, bucket) cells with their options, and notes about both."""
        buckets, groups = make_buckets(self.run.probe.timesteps(), step_buckets)
        notes = []
        if self.run.stopped:
            notes.append(
                f"budget_s={self.budget_s:g} ran out after {self.run.done} of {len(self.calls)} input(s) "
                f"({self.run.probe.calls} calls measured): this is the best plan from what was measured; stretches "
                "and modules never measured stay dense"
            )
        if self.run.unmeasured:
            names = ", ".join(self.run.unmeasured[:5]) + (", ..." if len(self.run.unmeasured) > 5 else "")
            notes.append(
                f"{len(self.run.unmeasured)} self-attention module(s) were never measured (their calls fell back to "
                f"dense, see the log, or never ran) and are not in the plan: {names}"
            )
        if not self.run.stopped and len(buckets) < step_buckets:
            notes.append(
                f"step_buckets={step_buckets} but the run had {len(buckets)} distinct timestep(s): "
                f"{len(buckets)} bucket(s)"
            )
        return buckets, make_cells(self.run.probe.records, groups, bound), notes


def measure(
    pipe: Any,
    inputs: Sequence[str] | Sequence[dict[str, Any]] | None = None,
    *,
    methods: Sequence[str] = ("gna",),
    seed: int = 0,
    call_kwargs: dict[str, Any] | None = None,
    queries: int = 64,
    batch_rows: int = 2,
    inputs_per_step: int | None = 2,
    backend: str = "auto",
    budget_s: float | None = None,
    progress: bool = True,
    blocked: bool = False,
) -> Measurement:
    """The dense run of `calibrate` (same arguments; ``blocked`` adds GNA's blocked windows): every input generated
    with the probe installed, which measures each module's candidates on sampled queries."""
    methods = _check_methods(methods)
    if budget_s is not None and (isinstance(budget_s, bool) or not isinstance(budget_s, int | float) or budget_s <= 0):
        raise ValueError(f"budget_s={budget_s!r} must be a number of seconds > 0, or None")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed={seed!r} must be an int")
    config = ProbeConfig(queries, batch_rows, seed, methods, blocked, inputs_per_step)
    calls = _inputs(pipe, inputs, call_kwargs, seed)
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    run = _dense_run(pipe, calls, config, backend, deadline, progress)
    return Measurement(pipe, calls, run, config, budget_s, deadline)


def plan_from(
    m: Measurement, target: Any, *, step_buckets: int = 3, backend: str = "auto", progress: bool = True
) -> tuple[Plan, list[Cell]]:
    """The `Plan` for ``target`` from a `Measurement` (and its cells); ``min_psnr`` generates a few candidate plans
    (within what is left of the budget)."""
    start = time.perf_counter()
    goal = CalibrationTarget.of(target)
    share = m.share
    buckets, cells, notes = m.cells(step_buckets, goal.bound)
    chosen, satisfied, extra_notes = _choose(cells, goal, share)
    notes += extra_notes
    run = m.run
    if goal.min_psnr is not None and run.outputs and not run.stopped:
        chosen, ok, psnr_notes = _psnr_search(
            m.pipe, m.calls[: len(run.outputs)], run.outputs, cells, chosen, goal, share, buckets, backend, m.deadline,
            progress, _signatures(m.pipe),
        )  # fmt: skip
        satisfied &= ok
        notes += psnr_notes
    elif goal.min_psnr is not None:
        satisfied = False
        notes.append("min_psnr was not checked: the budget ran out before the dense images were complete")
    plan = _plan(m, cells, chosen, buckets, goal, share, satisfied, notes, step_buckets)
    seconds = run.seconds + time.perf_counter() - start
    plan = dataclasses.replace(plan, info=(*plan.info, ("seconds", round(seconds, 3))))
    if not plan.sparse_modules:
        logger.warning("diffattn: calibration kept every module dense: %s", "; ".join(plan.notes) or "see the plan")
    return plan, cells


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    bad = [m for m in methods if m not in CANDIDATE_METHODS]
    if not methods or bad:
        raise ValueError(f"methods={methods!r}: calibration chooses among {CANDIDATE_METHODS} (and dense); got {bad}")
    return methods


def _inputs(pipe: Any, inputs: Any, call_kwargs: dict[str, Any] | None, seed: int) -> list[dict[str, Any]]:
    """Call keyword dicts, one per input, each with its seeded generator (pipelines)."""
    common = dict(call_kwargs or {})
    if isinstance(pipe, nn.Module):
        if not inputs or not all(isinstance(x, dict) for x in inputs):
            raise ValueError(
                "a bare denoiser needs inputs=[{forward keyword arguments}, ...] (e.g. sample/hidden_states, "
                "timestep, encoder_hidden_states)"
            )
        return [{**common, **x} for x in inputs]
    if inputs is None:
        inputs = _default_prompts(pipe, seed)
    if isinstance(inputs, str):
        inputs = [inputs]
    out = []
    for i, x in enumerate(inputs):
        if isinstance(x, str):
            x = {"prompt": x}
        if not isinstance(x, dict):
            raise TypeError(f"inputs[{i}]={x!r} must be a prompt string or a dict of pipeline call arguments")
        kw = {**common, **x}
        kw.setdefault("generator", torch.Generator("cpu").manual_seed(seed + i))
        out.append(kw)
    if not out:
        raise ValueError("inputs is empty: give prompts or call keyword dicts (or None for the defaults)")
    return out


def _default_prompts(pipe: Any, seed: int) -> list[str]:
    from ..pipelines.tiny_shapes.pipeline import TinyShapesPipeline

    if isinstance(pipe, TinyShapesPipeline):
        from ..pipelines.tiny_shapes.job import class_captions

        return class_captions(seed)
    return list(DEFAULT_PROMPTS)


@torch.no_grad()
def generate(pipe: Any, kw: dict[str, Any]) -> Tensor | None:
    """One generation (pipelines: as a float tensor in [0, 1]; bare denoisers: their output, not kept)."""
    if isinstance(pipe, nn.Module):
        pipe(**kw)
        return None
    kw = dict(kw)
    params = inspect.signature(pipe.__call__).parameters
    if "output_type" in params:
        kw["output_type"] = "pt"
    if "return_dict" in params:
        kw["return_dict"] = False
    gen = kw.get("generator")  # a copy each time: every rerun of an input (PSNR search) sees the same noise
    if isinstance(gen, torch.Generator):
        kw["generator"] = _copy(gen)
    elif isinstance(gen, list | tuple) and all(isinstance(g, torch.Generator) for g in gen):
        kw["generator"] = [_copy(g) for g in gen]
    out = pipe(**kw)
    out = out[0] if isinstance(out, tuple | list) else getattr(out, "images", getattr(out, "frames", out))
    if not isinstance(out, Tensor):
        import numpy as np

        out = torch.from_numpy(np.asarray(out))
    return out.detach().float().cpu().clamp(0, 1)


def _copy(gen: torch.Generator) -> torch.Generator:
    return torch.Generator(gen.device).set_state(gen.get_state())


def _dense_run(
    pipe: Any, calls: list[dict[str, Any]], config: ProbeConfig, backend: str, deadline: float | None, progress: bool
) -> _Run:
    from tqdm.auto import tqdm

    param = next(denoisers_of(pipe)[0][1].parameters(), None)
    sync = synchronizer(param.device if param is not None else torch.device("cpu"))
    probe = Probe(config, sync, deadline)
    handle = apply_attention(pipe, probe, backend=backend)
    outputs: list[Tensor] = []
    timer = StepTimer(pipe, sync)
    start = time.perf_counter()
    stopped = False
    done = 0
    bar = tqdm(calls, desc="calibrate: dense run", unit="input", disable=not progress)
    previous = getattr(pipe, "_progress_bar_config", None)
    try:
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        probe.inputs = len(calls)
        for i, kw in enumerate(bar):
            probe.input_index = i
            out = generate(pipe, kw)
            done += 1
            if out is not None:
                outputs.append(out)
            bar.set_postfix(calls=probe.calls, modules=len(probe.records))
            if deadline is not None and time.perf_counter() > deadline:
                stopped = done < len(calls)
                break
    except BudgetExhausted:
        stopped = True
    finally:
        bar.close()
        steps = timer.close()
        unmeasured = [name for name in handle.modules if name not in probe.records]
        handle.remove()
        if previous is not None:
            pipe._progress_bar_config = previous
        elif hasattr(pipe, "_progress_bar_config"):
            del pipe._progress_bar_config
    return _Run(probe, outputs, sum(steps), done, stopped, time.perf_counter() - start, unmeasured)


def _choose(cells: list[Cell], goal: CalibrationTarget, share: float) -> tuple[list[Option], bool, list[str]]:
    notes = []
    if goal.min_bound is None:
        if goal.max_attn_error is None and goal.min_mass is None:  # min_psnr alone: start from the strictest rung
            return [DENSE] * len(cells), True, notes
        chosen = choose_quality(cells, goal)
        satisfied = True
    else:
        chosen, satisfied = choose_speed(cells, goal, share)
        if not satisfied:
            fastest = predicted(cells, chosen, share)[1]
            limit = "inf" if share >= 1 else f"{1 / (1 - share):.2f}"
            notes.append(
                f"min_bound={goal.min_bound:g} is out of reach: the fastest plan meeting the quality targets predicts "
                f"{fastest:.2f}x end to end (Amdahl limit at a {share:.0%} attention share: {limit}x)"
            )
    measured = [c for c in cells if c.calls]
    sparse = sum(o.candidate is not None for o in chosen)
    if measured and not sparse:
        notes.append(
            f"no candidate met the target ({goal}) in any of {len(measured)} (module, bucket) cells: "
            "every module stays dense"
        )
    if not measured:
        notes.append("no self-attention call was measured: every module stays dense")
    return chosen, satisfied, notes


def _signatures(pipe: Any) -> tuple[ModelSignature, ...]:
    return tuple(ModelSignature.of(a, d) for a, d in denoisers_of(pipe))


def build_plan(
    model: tuple[ModelSignature, ...], cells: Sequence[Cell], chosen: Sequence[Option], buckets: Sequence[Any],
    share: float, **fields: Any,
) -> Plan:
    """The `Plan` of a choice per cell."""
    entries = []
    for cell, opt in zip(cells, chosen):
        cand = opt.candidate
        entries.append(PlanEntry(
            module=cell.module, bucket=cell.bucket, method="dense" if cand is None else cand.method,
            knobs=() if cand is None else cand.knobs, grid=cell.grid,
            error=None if cand is None else opt.error_max,
            mass=None if cand is None or math.isnan(opt.mass_min) else opt.mass_min,
            bound=opt.bound, attention_s=cell.dense_s, calls=cell.calls,
        ))  # fmt: skip
    attention, end_to_end = predicted(cells, chosen, share)
    return Plan(model=model, buckets=tuple(buckets), entries=tuple(entries), attention_share=share,
                attention_bound=attention, end_to_end_bound=end_to_end, **fields)  # fmt: skip


def _plan(
    m: Measurement, cells: list[Cell], chosen: list[Option], buckets: list[Bucket], goal: CalibrationTarget,
    share: float, satisfied: bool, notes: list[str], step_buckets: int,
) -> Plan:
    run, config = m.run, m.config
    info = (
        ("inputs", run.done), ("inputs_requested", len(m.calls)), ("calls_measured", run.probe.calls),
        ("queries_per_call", config.queries), ("batch_rows_per_call", config.rows),
        ("inputs_per_step", config.inputs_per_step), ("methods", config.methods),
        ("candidates_per_module", max((len(r.candidates) for r in run.probe.records.values()), default=0)),
        ("step_buckets_requested", step_buckets), ("dense_run_seconds", round(run.seconds, 3)),
        ("measuring_seconds", round(run.probe.overhead_s, 3)), ("seed", config.seed),
    )  # fmt: skip
    return build_plan(
        _signatures(m.pipe), cells, chosen, buckets, share, target=goal.items(), satisfied=satisfied,
        notes=tuple(notes), info=info,
    )  # fmt: skip


def mean_psnr(pipe: Any, plan: Plan, calls: Sequence[dict[str, Any]], refs: Sequence[Tensor], backend: str) -> float:
    """Mean PSNR (dB) of the images generated under ``plan`` against ``refs`` (same inputs, same noise)."""
    if not plan.sparse_modules:
        return math.inf
    handle = apply_attention(pipe, plan, backend=backend)
    try:
        values = [psnr(generate(pipe, kw), ref) for kw, ref in zip(calls, refs)]  # type: ignore[arg-type]
    finally:
        handle.remove()
    return sum(values) / len(values)


def _psnr_search(
    pipe: Any, calls: list[dict[str, Any]], refs: list[Tensor], cells: list[Cell], chosen: list[Option],
    goal: CalibrationTarget, share: float, buckets: list[Any], backend: str, deadline: float | None, progress: bool,
    model: tuple[ModelSignature, ...],
) -> tuple[list[Option], bool, list[str]]:
    """With ``min_bound``: check the speed plan's PSNR. Otherwise: the cheapest plan of the error-threshold family
    (per-call targets applied too) whose mean PSNR against the dense images reaches ``min_psnr`` (bisection over
    `PSNR_LADDER`: plans get cheaper as the threshold grows)."""
    from tqdm.auto import tqdm

    assert goal.min_psnr is not None

    def plan_of(options: list[Option]) -> Plan:
        return build_plan(model, cells, options, buckets, share)

    def late() -> bool:
        return deadline is not None and time.perf_counter() > deadline

    if goal.min_bound is not None:
        value = mean_psnr(pipe, plan_of(chosen), calls, refs, backend)
        ok = value >= goal.min_psnr
        notes = [] if ok else [f"the min_bound plan reaches {value:.2f} dB, below min_psnr={goal.min_psnr:g}"]
        return chosen, ok, notes
    cap = goal.max_attn_error
    rungs = [t for t in PSNR_LADDER if cap is None or t <= cap] or [cap]
    family = [choose_quality(cells, goal, t) for t in rungs]
    lo, hi = -1, len(family)  # family[lo] meets min_psnr (-1: dense), family[hi] does not
    tried: dict[int, float] = {}
    bar = tqdm(total=math.ceil(math.log2(len(family) + 1)), desc="calibrate: PSNR search", disable=not progress)
    try:
        while hi - lo > 1 and not late():
            mid = (lo + hi) // 2
            tried[mid] = mean_psnr(pipe, plan_of(family[mid]), calls, refs, backend)
            lo, hi = (mid, hi) if tried[mid] >= goal.min_psnr else (lo, mid)
            bar.update(1)
    finally:
        bar.close()
    notes = [f"PSNR search ({len(tried)} plan(s) generated): " + ", ".join(
        f"error <= {rungs[i]:g}: {v:.2f} dB" for i, v in sorted(tried.items()))]  # fmt: skip
    if hi - lo > 1:
        notes.append("budget_s ran out during the PSNR search: the best plan found so far that reaches min_psnr")
    if lo < 0:
        notes.append(f"no plan of the search reached min_psnr={goal.min_psnr:g} dB: every module stays dense")
        return [DENSE] * len(cells), hi - lo <= 1, notes
    return family[lo], True, notes
