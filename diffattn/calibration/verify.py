"""A plan proves itself: `diffattn.report.compare` on held-out inputs of dense, the calibrated plan, and the uniform
configuration of the same predicted bound (GNA, one window for every module and step: the window whose predicted
end-to-end bound, on the same measured attention times, is nearest the plan's)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..methods.routed import Plan
from ..report.bounds import parts_bounds, speedup_bound
from ..report.runner import RunConfig
from .candidates import Candidate, candidates_for
from .select import Cell


@dataclasses.dataclass(frozen=True)
class PlanRun(RunConfig):
    """A `compare` row that installs a calibrated `Plan` (held in ``method``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.method, Plan):
            raise TypeError(f"PlanRun holds a Plan, got {type(self.method).__name__}")

    @property
    def label(self) -> str:
        return "calibrated plan"


def uniform_candidates(cells: Sequence[Cell]) -> list[Candidate]:
    """The GNA windows of every module's ladder (whatever methods were calibrated), as one window for all modules
    and steps (clamped to each module's grid)."""
    found = [c for grid in dict.fromkeys(cell.grid for cell in cells) for c in candidates_for(grid, ["gna"])]
    return list(dict.fromkeys(found))


def uniform_bound(candidate: Candidate, cells: Sequence[Cell], share: float, kind: str) -> float:
    """Predicted end-to-end bound of ``candidate`` on every module and step, on the measured attention times."""
    parts = [(c.dense_s, speedup_bound(candidate.instance, c.grid, c.extra, kind)) for c in cells]
    return parts_bounds(parts, share)[1]


def nearest_uniform(cells: Sequence[Cell], target_bound: float, share: float, kind: str) -> tuple[Candidate, float]:
    """The uniform GNA window whose predicted end-to-end bound is nearest ``target_bound`` (in ratio)."""
    options = [(c, uniform_bound(c, cells, share, kind)) for c in uniform_candidates(cells)]
    if not options:
        raise ValueError("calibration measured no module: no uniform configuration to compare with")
    return min(options, key=lambda cb: (abs(math.log(cb[1] / target_bound)), -cb[1]))


def held_out(
    calls: Sequence[dict[str, Any]], prompts: Sequence[str] | None, seed: int, pipe: Any
) -> tuple[list[str], dict[str, Any]]:
    """Held-out prompts (given, else the calibration prompts; the embedded model: other captions) and the call
    arguments they share; a ValueError if the calibration inputs are not prompts with common arguments."""
    shared = [{k: v for k, v in c.items() if k not in ("prompt", "generator")} for c in calls]
    first = shared[0]
    if any(s.keys() != first.keys() or any(s[k] is not first[k] and s[k] != first[k] for k in s) for s in shared):
        raise ValueError("verify needs calibration inputs that differ only in their prompt (compare runs prompts)")
    if prompts is None:
        from ..pipelines.tiny_shapes.pipeline import TinyShapesPipeline

        if isinstance(pipe, TinyShapesPipeline):
            from ..pipelines.tiny_shapes.job import class_captions

            prompts = class_captions(seed + 1000)
        else:
            prompts = [c.get("prompt") for c in calls]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("verify needs prompts: give verify_inputs=[...] or calibrate on prompts")
    return list(prompts), shared[0]


def verify_plan(
    pipe: Any, plan: Plan, cells: Sequence[Cell], share: float, calls: Sequence[dict[str, Any]],
    verify_inputs: Sequence[str] | None, seed: int, backend: str, out_dir: Path, progress: bool,
) -> Plan:
    """Run `compare` (dense, ``plan``, the nearest uniform window) on held-out prompts with seeds ``seed + 1000 + i``;
    write its report to ``out_dir``; return ``plan`` with the outcome in its notes and info."""
    from ..report.compare import compare

    kind = dict(plan.target).get("bound", "flop")
    uniform, ubound = nearest_uniform(cells, plan.end_to_end_bound, share, kind)
    prompts, kw = held_out(calls, verify_inputs, seed, pipe)
    configs: list[RunConfig] = [RunConfig("gna", uniform.knobs)]
    if plan.sparse_modules:
        configs.insert(0, PlanRun(plan))  # type: ignore[arg-type]
    report = compare(
        pipe, configs, prompts, [seed + 1000 + i for i in range(len(prompts))], call_kwargs=kw, backend=backend,
        scorer=_scorer(pipe), out_dir=out_dir, progress=progress,
    )
    rows = {r["config"]: r for r in report["configs"]}
    plan_row = rows.get("calibrated plan")
    uni_row = rows[configs[-1].label]
    summary = (
        f"verified on {len(prompts)} held-out prompt(s) (report in {out_dir}): "
        + (f"plan PSNR {plan_row['psnr_db']:.2f} dB vs dense at a predicted bound of {plan.end_to_end_bound:.2f}x; "
           if plan_row else "the plan is all dense; ")
        + f"uniform {uniform.label} PSNR {uni_row['psnr_db']:.2f} dB at {ubound:.2f}x"
    )  # fmt: skip
    info = [("verify_report", str(out_dir)), ("verify_prompts", len(prompts)), ("uniform", uniform.label),
            ("uniform_bound", ubound), ("uniform_psnr_db", uni_row["psnr_db"])]  # fmt: skip
    if plan_row:
        info += [("plan_psnr_db", plan_row["psnr_db"]), ("plan_speedup_step_median", plan_row["speedup_step_median"])]
    for label, row in (("plan", plan_row), ("uniform", uni_row), ("dense", rows[report["configs"][0]["config"]])):
        if row is not None and row.get("accuracy") is not None:
            info.append((f"{label}_accuracy", row["accuracy"]))
    return dataclasses.replace(plan, notes=(*plan.notes, summary), info=(*plan.info, *info))


def _scorer(pipe: Any) -> Any:
    """The embedded model's shape scorer as ``(images, prompts) -> [N] correct``; None for other pipelines."""
    from ..pipelines.tiny_shapes.pipeline import TinyShapesPipeline

    if not isinstance(pipe, TinyShapesPipeline):
        return None
    from ..pipelines.tiny_shapes.scorer import caption_scorer

    return caption_scorer()
