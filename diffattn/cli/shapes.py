"""``diffattn generate`` on the embedded shapes model (the default model; README command 1) and ``inspect``'s inputs.

The main job: the same captions and seeds made three ways at the target size (default 128 px = 32x32 tokens,
16x the training tokens, where attention is a large share of a step):

- **dense**: the model at the target size, all steps;
- **the recipe**: two stages (`diffattn.pipelines.highres`): the training size dense, bicubic upscale, re-noise to
  strength 0.7 and the last 70% of the steps at the target with the method (default GNA, a sliding window of the
  8x8 training grid);
- **upscale only**, the control: the recipe's stage-1 image upscaled bicubically, no refine.

Timing follows `diffattn.report.timing`: one untimed warm-up per row, then the samples in batches, dense and
recipe batches interleaved (each batch a round, at least 3); per row the time per image and per step, median
[min-max] over rounds. Two speedups are kept apart: the **pipeline** speedup (time per image, dense / recipe)
and the **engine's** per-step speedup (a dense step / a refine step, both at the target size and batch size)
beside its Amdahl bound from the measured dense attention share. Quality per row: the scorer's accuracy with its
Wilson 95% interval, pattern-FID against real renders at the target size, PSNR / SSIM against dense, and exact
McNemar tests between rows on the same samples. Writes the captioned grid, one PNG per row and ``tiny_job.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from ..pipelines.tiny_shapes import data as tiny_data
from ..pipelines.tiny_shapes import pipeline as tm
from ..pipelines.tiny_shapes.job import (
    STRENGTH,
    TARGET,
    dense_batch,
    job_captions,
    job_scenes,
    save_grid,
    two_stage_batch,
    upscale_only,
)
from .args import method_knobs as knobs_from_args
from .inputs import check_memory, tiny_inputs

NUM_IMAGES = 36
"""Samples of the main job (6 per class): a Wilson interval of about +-14 points. Measured at load 1.5 on the 2 shared
cores, a 128 px dense image costs about 2.4 s (20 steps) and a recipe image about 1.5 s, so 36 samples keep the
command near two to two and a half minutes; more samples narrow the interval at a proportional cost."""
BATCH = 6
"""Samples per round (a round = one dense batch and one recipe batch): 6 rounds by default."""
# the job's targets (issue 22)
PIPELINE_SPEEDUP_GOAL = 1.5
ENGINE_FRACTION_GOAL = 0.7
ROWS = ("dense", "recipe", "upscale")


def cli_knobs(args: Any) -> dict[str, Any]:
    """The method's knobs on the embedded model (`args.method_knobs`: GNA sliding by default, GNA's options refused
    for other methods, the training receptive field when no knob is given)."""
    return knobs_from_args(args, embedded=True)


def _batches(n: int, rounds: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` of each round's samples: as even as possible, at least 3 rounds (the parser bounds
    ``rounds``)."""
    from ..report.timing import MIN_ROUNDS

    count = max(MIN_ROUNDS, math.ceil(n / BATCH)) if rounds is None else rounds
    if n < count:
        raise ValueError(f"--num-images {n} must be >= the {count} timed rounds (each round times a batch)")
    edges = [round(i * n / count) for i in range(count + 1)]
    return list(zip(edges, edges[1:]))


@dataclasses.dataclass
class _Row:
    """What one way of making the images produced, round by round."""

    images: list[torch.Tensor] = dataclasses.field(default_factory=list)
    per_image_s: list[float] = dataclasses.field(default_factory=list)
    step_s: list[float] = dataclasses.field(default_factory=list)  # per round: median step at the row's size
    steps_total_s: float = 0.0
    attention_s: dict[str, float] = dataclasses.field(default_factory=dict)
    stats: dict[str, SimpleNamespace] = dataclasses.field(default_factory=dict)  # summed calls per module
    grids: dict[str, tuple[tuple[int, ...], int]] = dataclasses.field(default_factory=dict)  # (grid, text)


class _Job:
    """The rounds of the main job; `dense` and `recipe` are the protocol's per-round callables."""

    def __init__(self, pipe: Any, captions: list[str], size: int, seed: int, steps: int, method: str,
                 knobs: dict[str, Any], where: dict[str, Any], modules: list[str], batches: list[tuple[int, int]]):
        from ..report.runner import resolve_module

        self.pipe, self.captions, self.size, self.seed, self.steps = pipe, captions, size, seed, steps
        self.method, self.knobs, self.where = method, knobs, where
        self.modules = {m: resolve_module(pipe, m) for m in modules}
        self.rows = {k: _Row(attention_s=dict.fromkeys(modules, 0.0)) for k in ROWS}
        self._dense, self._recipe = iter(batches), iter(batches)

    def dense(self) -> float:
        from ..report.runner import TimedCall

        start, stop = next(self._dense)
        with TimedCall(self.pipe, "cpu", self.modules) as timed:
            images = dense_batch(self.pipe, self.captions[start:stop], self.size, self.seed, start, self.steps)
        times, spent = timed.step_s, timed.attention_s
        per_image = timed.wall_s / (stop - start)
        row = self.rows["dense"]
        row.images.append(images)
        row.per_image_s.append(per_image)
        row.step_s.append(_median(times))
        row.steps_total_s += sum(times)
        for name, s in spent.items():
            row.attention_s[name] += s
        return per_image

    def recipe(self) -> float:
        from ..report.runner import TimedCall, add_call_counts

        start, stop = next(self._recipe)
        with TimedCall(self.pipe) as timed:
            images, record = two_stage_batch(self.pipe, self.captions[start:stop], self.size, self.seed, start,
                                             self.steps, self.method, self.knobs, **self.where)
        refine = timed.steps.step_times((self.size, self.size))
        base = timed.steps.step_times((tm.RESOLUTION, tm.RESOLUTION))
        per_image = timed.wall_s / (stop - start)
        n = stop - start
        t1 = time.perf_counter()
        control = upscale_only(record.base, self.size)
        upscale_s = time.perf_counter() - t1
        row, ctl = self.rows["recipe"], self.rows["upscale"]
        row.images.append(images)
        row.per_image_s.append(per_image)
        row.step_s.append(_median(refine))
        row.steps_total_s += sum(refine)
        add_call_counts(row.stats, {m: SimpleNamespace(**st) for m, st in record.stages[1].stats.items()})
        for m, st in record.stages[1].stats.items():
            if st.get("grid"):
                row.grids.setdefault(m, (tuple(st["grid"]), int(st.get("text") or 0)))
        ctl.images.append(control)
        ctl.per_image_s.append((record.stages[0].seconds + upscale_s) / n)
        ctl.step_s.append(_median(base))
        return per_image

    def warm_up(self, batch: int) -> dict[str, Any]:
        """One untimed call per row at the target size and a round's batch size, 2 steps (allocations, plan
        caches)."""
        captions = self.captions[:batch]
        return {
            "dense": lambda: dense_batch(self.pipe, captions, self.size, self.seed, 0, 2),
            "recipe": lambda: two_stage_batch(self.pipe, captions, self.size, self.seed, 0, 2, self.method,
                                              self.knobs, **self.where),
        }


def _median(values: list[float]) -> float:
    import statistics

    return statistics.median(values) if values else float("nan")


def _quality(rows: dict[str, torch.Tensor], captions: list[str], size: int, seed: int) -> dict[str, Any]:
    """Per row: accuracy (Wilson 95%), pattern-FID vs real renders at ``size``, PSNR / SSIM vs dense; and the
    paired McNemar tests between rows."""
    from ..pipelines.tiny_shapes.scorer import labels_of, load_scorer, pattern_fid, predict
    from ..report.quality import psnr, ssim
    from ..report.significance import mcnemar, proportion

    scorer = load_scorer()
    labels = labels_of(captions)
    n_real = max(96, len(captions))
    real_labels = torch.arange(n_real) % len(tiny_data.CLASSES)
    real = tiny_data.render(tiny_data.sample_scenes(n_real, seed=seed + 100_003, labels=real_labels), size)
    correct = {k: (predict(v, scorer) == labels).tolist() for k, v in rows.items()}
    out: dict[str, Any] = {"rows": {}, "paired": {}, "real_samples": n_real}
    for key, images in rows.items():
        q = {"accuracy": proportion(correct[key]).to_dict(), "pattern_fid": pattern_fid(images, real, scorer),
             "per_sample_correct": correct[key], "psnr_db": None, "ssim": None}
        if key != "dense" and "dense" in rows:
            q["psnr_db"] = _mean([psnr(a, b) for a, b in zip(images, rows["dense"])])
            q["ssim"] = _mean([ssim(a, b) for a, b in zip(images, rows["dense"])])
        out["rows"][key] = q
    pairs = [("recipe", "dense"), ("upscale", "dense"), ("recipe", "upscale")]
    for a, b in pairs:
        if a in correct and b in correct:
            out["paired"][f"{a} vs {b}"] = mcnemar(correct[a], correct[b]).to_dict()
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's four targets, each with its status and, when missed, which part and the measured figures."""
    rows, speed = result["quality"]["rows"], result["speed"]
    if "dense" not in rows:
        return []
    dense, recipe = rows["dense"], rows["recipe"]
    low = dense["accuracy"]["wilson95"][0]
    pipeline, engine = speed["pipeline_speedup"], speed["engine_step_speedup"]
    load = result["load_average"]
    # the job's own threads count in the load average: only what runs beyond them is other work
    busy = load and load[0] > result["meta"]["threads"] + 0.5
    why_busy = (f"; the load average was {load[0]:.2f} on {result['cpus']} CPUs, more than this job's "
                f"{result['meta']['threads']} threads (other work shared them)") if busy else ""  # fmt: skip
    out = [
        {"target": "recipe accuracy within or above dense's 95% interval",
         "pass": recipe["accuracy"]["accuracy"] >= low,
         "measured": f"{recipe['accuracy']['accuracy']:.0%} vs dense's lower bound {low:.0%}",
         "why": "quality: the refine lost the class the scorer sees"},
        {"target": "recipe pattern-FID below dense's", "pass": recipe["pattern_fid"] < dense["pattern_fid"],
         "measured": f"{recipe['pattern_fid']:.1f} vs {dense['pattern_fid']:.1f}",
         "why": "quality: the recipe's images are further from real renders at this size than dense's"},
        {"target": f"pipeline speedup >= {PIPELINE_SPEEDUP_GOAL}x",
         "pass": pipeline["speedup"] >= PIPELINE_SPEEDUP_GOAL,
         "measured": f"{pipeline['speedup']:.3f}x",  # 3 decimals: 1.497x must not read as a met 1.50x
         "why": "speed: the refine steps at the target size cost too much" + why_busy},
        {"target": f"engine step speedup >= {ENGINE_FRACTION_GOAL} of its Amdahl bound",
         "pass": engine["fraction_of_bound"] is not None and engine["fraction_of_bound"] >= ENGINE_FRACTION_GOAL,
         "measured": f"{engine['speedup']:.2f}x = {engine['fraction_of_bound'] or 0:.3f} of "
                     f"{engine['amdahl_bound']:.2f}x",
         "why": "engine: the CPU attention kernel falls short of its bound at this grid" + why_busy},
    ]
    return out


def _print_report(result: dict[str, Any], labels: dict[str, str]) -> None:
    from ..report.significance import PairedTest, wilson
    from ..report.timing import Speedup, Spread, load_text

    meta = result["meta"]
    print(f"model tiny (embedded shapes model, trained at {tm.RESOLUTION}px = {tm.TRAIN_GRID[0]}x{tm.TRAIN_GRID[1]} "
          f"tokens)  target {meta['size']}px = {meta['grid']}x{meta['grid']} tokens  {meta['steps']} steps  "
          f"{meta['samples']} samples (seeds {meta['seed']}-{meta['seed'] + meta['samples'] - 1})  "
          f"{meta['rounds']} interleaved rounds after one untimed warm-up per row  {meta['threads']} threads")
    print(f"recipe: {tm.RESOLUTION}px dense ({meta['steps']} steps) -> bicubic x{meta['size'] // tm.RESOLUTION} -> "
          f"re-noise to {meta['strength']} -> {meta['refine_steps']} steps at {meta['size']}px with {meta['method']} "
          f"{meta['knobs']}")
    print(f"{'':<14} {'time/image s':<20} {'time/step ms':<26} {'accuracy [95%]':<16} {'pattern-FID':<12} "
          "vs dense (PSNR dB / SSIM)")
    for key, row in result["rows"].items():
        per_image = Spread(**_spread_args(row["time_per_image_s"]))
        per_step = Spread(**_spread_args(row["time_per_step_s"])).scaled(1000)
        q = result["quality"]["rows"][key]
        acc = q["accuracy"]
        vs = "-" if q["psnr_db"] is None else f"{q['psnr_db']:.1f} / {q['ssim']:.3f}"
        print(f"{labels[key]:<14} {per_image.text('.2f'):<20} {per_step.text('.1f'):<26} "
              f"{wilson(acc['correct'], acc['samples']).text():<16} {q['pattern_fid']:<12.1f} {vs}")
    print(f"  (time/step: dense and 2-stage at {meta['size']}px, the 2-stage row's refine steps; upscale only: its "
          f"{tm.RESOLUTION}px stage-1 steps)")
    speed = result["speed"]
    if speed:
        pipe_s, eng = speed["pipeline_speedup"], speed["engine_step_speedup"]
        pipeline = Speedup(Spread.of(pipe_s["per_round"]), pipe_s["amdahl_bound"])
        engine = Speedup(Spread.of(eng["per_round"]), eng["amdahl_bound"], eng["attention_bound"])
        print(f"pipeline speedup (time per image, dense / recipe at {meta['size']}px): "
              f"{pipeline.text('two-stage bound')}")
        print(f"engine step speedup ({meta['method']} vs dense, one step at {meta['size']}px, batch {meta['batch']}): "
              f"{engine.text()}  [dense attention share {speed['dense_attention_share']:.0%}]")
    for name, test in result["quality"]["paired"].items():
        a, b = name.split(" vs ")
        print("paired (exact McNemar): " + PairedTest(test["only_a"], test["only_b"], test["n"], test["p"]).text(
            labels[a], labels[b]))
    for t in result["targets"]:
        status = "met" if t["pass"] else "MISSED"
        why = "" if t["pass"] else f" ({t['why']})"
        print(f"target {status}: {t['target']}: {t['measured']}{why}")
    print(load_text(result["load_average_before"], result["load_average"]))


def _spread_args(d: dict[str, Any]) -> dict[str, Any]:
    return {"median": d["median"], "low": d["min"], "high": d["max"], "values": tuple(d["values"])}


def generate_tiny(args: Any) -> int:
    """The ``generate`` command for ``--model tiny`` (args as parsed by `diffattn.cli`): the main job."""
    from ..patch import apply_attention
    from ..report.bounds import end_to_end_bounds, two_stage_bound
    from ..report.timing import Speedup, Spread, interleaved_rounds, load_average

    knobs = cli_knobs(args)
    pipe, _, size, steps = tiny_inputs(args, default_size=TARGET)
    where = {"layers": args.layers, "backend": args.backend}
    # bad knob values, layers, backend or temporal window fail here, before any generation (bit-exact undo)
    trial = apply_attention(pipe, args.method, **where, temporal_window=getattr(args, "temporal_window", None),
                            **knobs)
    trial.remove()
    if size <= tm.RESOLUTION:
        raise ValueError(f"--height/--width {size} must be above the training size {tm.RESOLUTION}: the main job "
                         "compares ways of making images larger than the model was trained at")
    n = NUM_IMAGES if args.num_images is None else args.num_images  # the parser bounds --num-images
    batches = _batches(n, args.rounds)
    refine_steps = int(steps * STRENGTH)
    if refine_steps < 1:
        raise ValueError(f"--steps {steps} leaves int({steps} * {STRENGTH}) = 0 refine steps; use --steps >= 2")
    check_memory(pipe, {"height": size, "width": size}, batch=max(b - a for a, b in batches))  # a round's batch
    captions = [args.prompt] * n if args.prompt else job_captions(n, args.seed)
    real = None if args.prompt else tiny_data.render(job_scenes(n, args.seed), size)  # the captions' own scenes
    args.out.mkdir(parents=True, exist_ok=True)
    job = _Job(pipe, captions, size, args.seed, steps, args.method, knobs, where, list(trial.modules), batches)
    fns = {"recipe": job.recipe} if args.no_dense else {"dense": job.dense, "recipe": job.recipe}
    warm = {k: v for k, v in job.warm_up(batches[0][1] - batches[0][0]).items() if k in fns}
    print(f"running {len(fns)} x {len(batches)} interleaved rounds of about {n // len(batches)} samples at "
          f"{size}px (dense and the recipe; the upscale-only control is the recipe's stage 1) ...", file=sys.stderr)
    started = time.perf_counter()
    rounds = interleaved_rounds(fns, len(batches), warmup=warm,
                                log=lambda line: print("  " + line, file=sys.stderr))
    images = {k: torch.cat(job.rows[k].images) for k in ROWS if job.rows[k].images}
    quality = _quality(images, captions, size, args.seed)
    grid = size // tm.PATCH
    rows_out: dict[str, Any] = {}
    notes = {"dense": f"at {size}px", "recipe": f"refine steps at {size}px", "upscale": f"stage 1 at {tm.RESOLUTION}px"}
    for key in ROWS:
        row = job.rows[key]
        if not row.images:
            continue
        rows_out[key] = {"time_per_image_s": Spread.of(row.per_image_s).to_dict(),
                         "time_per_step_s": Spread.of(row.step_s).to_dict(), "step_note": notes[key]}
    speed: dict[str, Any] = {}
    if not args.no_dense:
        dense, recipe = job.rows["dense"], job.rows["recipe"]
        bounds = end_to_end_bounds(trial.method, recipe.stats, recipe.grids, dense.attention_s, dense.steps_total_s,
                                   list(trial.modules))
        engine = Speedup.paired(dense.step_s, recipe.step_s, bounds["end_to_end_bound"], bounds["attention_bound"],
                                rounds.load_before, rounds.load_after)
        pipeline = rounds.speedup("dense", "recipe", two_stage_bound(steps, refine_steps, bounds["end_to_end_bound"]))
        speed = {"pipeline_speedup": pipeline.to_dict(), "engine_step_speedup": engine.to_dict(),
                 "dense_attention_share": bounds["dense_attention_share"], "bounds": bounds,
                 "pipeline_bound": "steps / refine steps x the engine's Amdahl bound (bounds.two_stage_bound)"}
    labels = {"dense": "dense", "recipe": f"2-stage {args.method}", "upscale": "upscale only"}
    result: dict[str, Any] = {
        "meta": {"size": size, "grid": grid, "steps": steps, "refine_steps": refine_steps, "strength": STRENGTH,
                 "samples": n, "seed": args.seed, "rounds": len(batches), "batch": n // len(batches),
                 "method": args.method, "knobs": {k: v for k, v in knobs.items()}, "threads": torch.get_num_threads(),
                 "captions": captions, "labels": labels, "torch": torch.__version__,
                 "seconds": time.perf_counter() - started},
        "rows": rows_out,
        "speed": speed,
        "quality": quality,
        "timing_rounds": rounds.to_dict(),
        "load_average_before": rounds.load_before,
        "load_average": load_average(),
        "cpus": os.cpu_count(),
    }
    result["targets"] = _targets(result)
    _print_report(result, labels)
    _write(result, images, real, captions, labels, args.out)
    return 0


def _write(result: dict[str, Any], images: dict[str, torch.Tensor], real: torch.Tensor | None, captions: list[str],
           labels: dict[str, str], out: Path) -> None:
    """One PNG per row and the captioned grid (the first sample of each class; a row of the captions' own scenes
    rendered at the target size when the captions are the job's), and the JSON of everything."""
    per_class = [captions.index(c) for c in dict.fromkeys(captions)][: len(tiny_data.CLASSES)]
    names = {"dense": "dense", "recipe": "two_stage", "upscale": "upscale_only"}
    heads = [captions[i] for i in per_class]
    for key, imgs in images.items():
        save_grid({labels[key]: imgs[per_class]}, heads, out / f"{names[key]}.png")
    rows = {labels[k]: v[per_class] for k, v in images.items()}
    if real is not None:
        rows["real render"] = real[per_class]
    grid = save_grid(rows, heads, out / "tiny_grid.png")
    (out / "tiny_job.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {grid}, {out / 'tiny_job.json'} and {', '.join(names[k] + '.png' for k in images)}")


def add_job_args(p: argparse.ArgumentParser) -> None:
    """The main job's own options (``generate`` only)."""
    from . import args as opt

    opt.num_images(p, f"embedded model: samples of the main job (default {NUM_IMAGES}, classes in turn)")
    opt.rounds(p, "interleaved timed rounds, >= 3 (default 3; embedded model: one per batch of about "
                  f"{BATCH} samples)")
