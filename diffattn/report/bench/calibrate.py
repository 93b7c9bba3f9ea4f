"""Calibrated plan vs the uniform window at the same predicted bound, on the embedded model at 2x and 4x its training
size (``scripts/bench_calibrate.py``).

Per scale: one dense calibration run (`diffattn.calibration.measure`, timed) on its captions; the uniform
configuration is GNA's training receptive field, a sliding 8x8 window on every module and step (the embedded model's
``method_knobs("gna")``); its predicted end-to-end bound on the calibration's own measurements is the speed target
of the plan (``min_bound``), so both are compared at the same predicted bound. Then held-out captions and seeds
(``per_class`` per class), generated dense, with the plan and with the uniform window, interleaved batch by batch
(each batch runs the three configs in a rotating order; one warm-up batch first): scorer accuracy with Wilson 95%
intervals, PSNR against dense (mean, standard deviation, 95% interval of the mean), the per-image PSNR difference plan
minus uniform, seconds per image, and the load average. Writes ``calibrate.json`` / ``calibrate.md`` and a sample grid
per size (``calibrate_<size>px.png``: dense, plan and uniform rows).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ...calibration import CalibrationTarget
from ...calibration.candidates import Candidate
from ...calibration.run import measure, plan_from
from ...calibration.verify import uniform_bound
from ...patch import apply_attention
from ...pipelines.tiny_shapes import pipeline as tm
from ...pipelines.tiny_shapes.job import STEPS, class_captions, method_knobs, sample, save_grid
from ...pipelines.tiny_shapes.scorer import labels_of, load_scorer, predict
from ...report.quality import psnr
from ...report.significance import wilson
from .common import log, run_meta, write_result

Z95 = 1.959964


def spread(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation, 95% interval of the mean (normal), median."""
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    half = Z95 * sd / math.sqrt(len(values))
    return {"mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "median": statistics.median(values)}


def uniform_candidate() -> Candidate:
    """GNA at the training receptive field (`job.method_knobs`): sliding 8x8 on every module and step."""
    knobs = method_knobs("gna")
    return Candidate("gna", (("stride", knobs["stride"]), ("window", knobs["window"])))


def run_scale(
    pipe: Any, scale: int, per_class: int, calib_captions: int, steps: int, seed: int, batch: int, queries: int,
    inputs_per_step: int, scorer: Any,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]:
    size = tm.RESOLUTION * scale
    call = {"height": size, "width": size, "num_inference_steps": steps}
    captions = class_captions(seed)[:calib_captions]
    log(f"[{size}px] calibrating on {len(captions)} captions, {steps} steps")
    start = time.perf_counter()
    m = measure(pipe, captions, seed=seed, call_kwargs=call, queries=queries, inputs_per_step=inputs_per_step,
                progress=False)  # fmt: skip
    uniform = uniform_candidate()
    _, cells, _ = m.cells(3, "flop")
    ubound = uniform_bound(uniform, cells, m.share, "flop")
    plan, _ = plan_from(m, CalibrationTarget(min_bound=ubound), step_buckets=3, progress=False)
    calib_s = time.perf_counter() - start
    log(f"[{size}px] calibration {calib_s:.1f} s; uniform {uniform.label} predicts {ubound:.3f}x; plan "
        f"{plan.end_to_end_bound:.3f}x ({len(plan.sparse_modules)}/{len(plan.modules)} modules sparse)")  # fmt: skip
    held = class_captions(seed + 1000, per_class)
    eval_seed = seed + 5000
    configs = {"dense": None, "plan": plan, "uniform": dict(uniform.knobs)}
    images: dict[str, list[torch.Tensor]] = {k: [] for k in configs}
    seconds = dict.fromkeys(configs, 0.0)

    def generate(name: str, caps: list[str], first: int) -> tuple[torch.Tensor, float]:
        cfg = configs[name]
        installed = (
            contextlib.nullcontext() if cfg is None
            else apply_attention(pipe, "gna", **cfg) if isinstance(cfg, dict)
            else apply_attention(pipe, cfg)
        )  # fmt: skip
        with installed:  # a handle removes itself on exit
            return sample(pipe, caps, size, eval_seed + first, steps, batch=len(caps))

    for name in configs:  # warm-up: plan caches, allocations
        generate(name, held[:2], 0)
    loads = [os.getloadavg()[0]]
    order = list(configs)
    for r, first in enumerate(range(0, len(held), batch)):
        caps = held[first : first + batch]
        for name in order[r % 3 :] + order[: r % 3]:  # rotate: drift hits every config alike
            imgs, secs = generate(name, caps, first)
            images[name].append(imgs)
            seconds[name] += secs
        loads.append(os.getloadavg()[0])
        log(f"[{size}px] {first + len(caps)}/{len(held)} held-out samples")
    stacked = {k: torch.cat(v) for k, v in images.items()}
    labels = labels_of(held)
    cell: dict[str, Any] = {
        "scale": scale, "size": size, "tokens": (size // tm.PATCH) ** 2, "samples": len(held), "steps": steps,
        "calibration_s": calib_s, "calibration_captions": len(captions),
        "calls_measured": dict(plan.info)["calls_measured"],
        "attention_share": plan.attention_share, "uniform_config": uniform.label, "uniform_bound": ubound,
        "plan_bound": plan.end_to_end_bound, "plan_attention_bound": plan.attention_bound,
        "plan_sparse_modules": len(plan.sparse_modules), "plan": plan.to_dict(), "load_avg": loads,
    }  # fmt: skip
    dense = stacked["dense"]
    per_image = {}
    for name, imgs in stacked.items():
        correct = (predict(imgs, scorer) == labels).int()
        interval = wilson(int(correct.sum()), len(correct))
        row = {"accuracy": float(correct.float().mean()), "accuracy_wilson95": [interval.low, interval.high],
               "seconds_per_image": seconds[name] / len(held)}  # fmt: skip
        if name != "dense":
            per_image[name] = [psnr(a, b) for a, b in zip(imgs, dense)]
            row["psnr_db"] = spread(per_image[name])
        cell[name] = row
    diff = [a - b for a, b in zip(per_image["plan"], per_image["uniform"])]
    cell["psnr_plan_minus_uniform_db"] = {**spread(diff), "plan_higher_fraction": sum(d > 0 for d in diff) / len(diff)}
    lo, hi = cell["dense"]["accuracy_wilson95"]
    cell["plan_accuracy_within_dense_interval"] = lo <= cell["plan"]["accuracy"] <= hi
    shown = {k: v[:: max(1, per_class)][:6] for k, v in stacked.items()}
    return cell, shown, held[:: max(1, per_class)][:6]


def run_and_write(
    out: Path, scales: tuple[int, ...] = (2, 4), per_class: int = 16, calib_captions: int = 6, steps: int = STEPS,
    seed: int = 0, batch: int = 24, threads: int = 1, queries: int = 64, inputs_per_step: int = 2,
    quick: bool = False, argv: list[str] | None = None,
) -> int:
    """Run every scale and write ``out/calibrate.{json,md}`` and the sample grids."""
    start = time.perf_counter()
    torch.set_num_threads(threads)
    if quick:  # a smoke run: a few samples, fewer steps
        per_class, calib_captions, steps, batch = 1, 2, 8, 6
    pipe = tm.tiny_model()
    scorer = load_scorer()
    cells = []
    for scale in scales:
        cell, shown, caps = run_scale(pipe, scale, per_class, calib_captions, steps, seed, batch, queries,
                                      inputs_per_step, scorer)  # fmt: skip
        cells.append(cell)
        save_grid(shown, caps, out / f"calibrate_{cell['size']}px.png")
    payload = {"meta": run_meta(argv, start, quick=quick, threads_set=threads, seed=seed), "cells": cells}
    write_result(out, "calibrate", payload, markdown(payload))
    return 0


def _ci(interval: list[float], fmt: str = ".0%") -> str:
    return f"[{format(interval[0], fmt)}, {format(interval[1], fmt)}]"


def markdown(payload: dict[str, Any]) -> str:
    meta = payload["meta"]
    lines = [
        "# Calibrated plan vs uniform window at the same predicted bound (embedded model)",
        "",
        f"{meta['date']}, {meta['threads']} thread(s), torch {meta['torch']}"
        f"{' (QUICK smoke run: not a measurement)' if meta['quick'] else ''}. "
        "Uniform: GNA sliding 8x8 on every module and step (the training receptive field); plan: calibrated with "
        "min_bound = the uniform's predicted end-to-end bound on the same measurements. Held-out captions and "
        "seeds; PSNR against the dense images of the same seeds.",
        "",
        "| size | n | config | predicted e2e bound | scorer accuracy [Wilson 95%] | PSNR vs dense dB: mean ± sd "
        "[95% CI of mean] | s / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in payload["cells"]:
        for name in ("dense", "plan", "uniform"):
            row = c[name]
            bound = {"dense": "1.00", "plan": f"{c['plan_bound']:.3f}", "uniform": f"{c['uniform_bound']:.3f}"}[name]
            p = row.get("psnr_db")
            ps = "-" if p is None else f"{p['mean']:.2f} ± {p['sd']:.2f} {_ci(p['ci95'], '.2f')}"
            label = name if name != "uniform" else f"uniform ({c['uniform_config']})"
            lines.append(f"| {c['size']}px | {c['samples']} | {label} | {bound} | {row['accuracy']:.0%} "
                         f"{_ci(row['accuracy_wilson95'])} | {ps} | {row['seconds_per_image']:.2f} |")  # fmt: skip
    lines += ["", "| size | calibration wall time (s) | captions x steps | calls measured | attention share | "
              "plan - uniform PSNR dB (mean [95% CI]) | plan higher on | plan accuracy within dense's interval | "
              "load avg (min-max) |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in payload["cells"]:
        d = c["psnr_plan_minus_uniform_db"]
        lines.append(
            f"| {c['size']}px | {c['calibration_s']:.1f} | {c['calibration_captions']} x {c['steps']} | "
            f"{c['calls_measured']} | {c['attention_share']:.0%} | {d['mean']:+.2f} {_ci(d['ci95'], '+.2f')} | "
            f"{d['plan_higher_fraction']:.0%} | {'yes' if c['plan_accuracy_within_dense_interval'] else 'NO'} | "
            f"{min(c['load_avg']):.1f}-{max(c['load_avg']):.1f} |"
        )
    return "\n".join(lines) + "\n"
