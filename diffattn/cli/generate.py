"""``diffattn generate`` (dense, then the method, same seed; both timed) and ``diffattn inspect`` (the per-module
table of what the method would do, from one denoiser call)."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from ..patch import apply_attention
from ..pipelines.load import EMBEDDED
from . import args as opt
from .inputs import before_load, load, method_knobs, where

GENERATE_HELP = (
    "dense vs accelerated, same seeds, timed by one protocol (warm-up, interleaved rounds, median [min-max]); "
    "on the embedded model (default) the main job: dense vs the two-stage recipe vs upscale only, with quality"
)
INSPECT_HELP = "per patched module: family, kind, grid, text/extra tokens, method and bound, from one denoiser call"


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """The model, method and size arguments that ``generate`` and ``inspect`` share."""
    opt.model(p, EMBEDDED, f"tiny (embedded trained shapes model, default), {opt.OFFLINE} (random weights, offline), "
              "a hub id or a local path")  # fmt: skip
    opt.method(p, "gna", "attention method (see `diffattn methods`)")
    opt.gna_knobs(p)
    opt.knob(p, "a knob of any method, repeatable: e.g. --knob window=8,8 --knob shift=false --knob ratio=0.1 "
             "(without knobs msw/proxy/agent use the model family's preset, see `diffattn presets`)")  # fmt: skip
    p.add_argument("--layers", default=None, help="regex on module names to patch (default: all self-attention)")
    p.add_argument(
        "--temporal-window",
        type=int,
        default=None,
        help="also run 1-D GNA with this window over frames on temporal attention (video UNets, Latte); "
        "default: temporal attention stays dense",
    )
    opt.size(p, help=" (tiny-sd default 256)", what="image ")
    opt.frames(p)
    opt.steps(p, "denoising steps (tiny default 2, hub default 30)")
    opt.prompt(p, None, "hub default: a red fox...; tiny default: one caption per class")
    opt.seed(p)
    opt.backend(p)
    opt.dtype(p)
    opt.verbose(p)


def add_parsers(sub: Any) -> None:
    from .shapes import add_job_args

    g = sub.add_parser("generate", help=GENERATE_HELP)
    _add_run_args(g)
    opt.out(g, "diffattn_out")
    g.add_argument("--no-dense", action="store_true", help="skip the dense reference run")
    add_job_args(g)
    i = sub.add_parser("inspect", help=INSPECT_HELP)
    _add_run_args(i)
    i.add_argument("--plan", type=Path, default=None, help="a calibrated plan JSON (diffattn calibrate), not --method")


def _save(out: Any, path: Path) -> Path:
    images = getattr(out, "images", None)
    if images is not None:
        target = path.with_suffix(".png")
        images[0].save(target)
        return target
    frames = out.frames[0]
    target = path.with_suffix(".gif")
    frames[0].save(target, save_all=True, append_images=list(frames[1:]), duration=125, loop=0)
    return target


class _Runs:
    """The protocol's per-round callables of ``generate``: dense (unpatched) and the method (installed for its
    call only, untimed), each returning its call's median step time; the first output of each is kept."""

    def __init__(self, pipe: Any, kw: dict[str, Any], seed: int, method: str, knobs: dict[str, Any],
                 where_: dict[str, Any], modules: list[str]) -> None:
        from ..report.runner import resolve_module

        self.pipe, self.kw, self.seed, self.method, self.knobs, self.where = pipe, kw, seed, method, knobs, where_
        self.modules = {m: resolve_module(pipe, m) for m in modules}
        self.outputs: dict[str, Any] = {}
        self.wall: dict[str, list[float]] = {"dense": [], "method": []}
        self.dense_attention_s = dict.fromkeys(modules, 0.0)
        self.dense_steps_s = 0.0
        self.stats: dict[str, SimpleNamespace] = {}
        self.grids: dict[str, tuple[tuple[int, ...], int]] = {}
        self.handle: Any = None

    def _call(self, key: str, steps: int | None = None) -> tuple[Any, list[float], dict[str, float]]:
        from ..report.runner import TimedCall

        kw = dict(self.kw, generator=torch.Generator("cpu").manual_seed(self.seed))
        if steps is not None:
            kw["num_inference_steps"] = steps
        modules = self.modules if key == "dense" else None
        with TimedCall(self.pipe, getattr(self.pipe, "device", "cpu"), modules) as timed:
            out = self.pipe(**kw)
        if steps is None:
            self.wall[key].append(timed.wall_s)
            self.outputs.setdefault(key, out)
        return out, timed.step_s, timed.attention_s

    def dense(self, steps: int | None = None) -> float:
        _, times, spent = self._call("dense", steps)
        if steps is None:
            self.dense_steps_s += sum(times)
            for name, s in spent.items():
                self.dense_attention_s[name] += s
        return statistics.median(times)

    def accelerated(self, steps: int | None = None) -> float:
        from ..report.runner import GridRecorder, add_call_counts

        handle = apply_attention(self.pipe, self.method, **self.where, **self.knobs)
        self.handle = handle
        try:
            recorder = GridRecorder(handle)
            try:
                _, times, _ = self._call("method", steps)
            finally:
                grids = recorder.close()
        finally:
            handle.remove()
        if steps is None:
            add_call_counts(self.stats, handle.stats())
            for name, g in grids.items():
                self.grids.setdefault(name, g)
        return statistics.median(times)


def generate(args: argparse.Namespace) -> int:
    """``diffattn generate``: dense and the method, same seed, timed by the protocol of `diffattn.report.timing`
    (one untimed warm-up each, interleaved rounds, per-step median [min-max]); the speedup beside its bounds."""
    before_load(args)  # the output folder and sizes, before any model loads
    if args.model == EMBEDDED:  # the embedded trained model: its own job (accuracy, PSNR/SSIM, captioned grid)
        from .shapes import generate_tiny

        return generate_tiny(args)
    from ..report.bounds import end_to_end_bounds
    from ..report.timing import MIN_ROUNDS, Spread, interleaved_rounds, load_text

    if args.num_images is not None:
        raise ValueError("--num-images is an option of the embedded model's job (--model tiny); "
                         f"{args.model} makes one image per run")
    rounds = MIN_ROUNDS if args.rounds is None else args.rounds  # the parser checked the range
    knobs = method_knobs(args)
    pipe, kw = load(args)
    # Validate knob values, preset, layers and backend on this pipeline before any generation: a
    # trial install that is removed at once (apply/remove is bit-exact).
    trial = apply_attention(pipe, args.method, **where(args), **knobs)
    trial.remove()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = _Runs(pipe, kw, args.seed, args.method, knobs, where(args), list(trial.modules))
    fns = {"method": runs.accelerated} if args.no_dense else {"dense": runs.dense, "method": runs.accelerated}
    warm_steps = min(2, kw.get("num_inference_steps") or 2)
    warm = {"dense": lambda: runs.dense(warm_steps), "method": lambda: runs.accelerated(warm_steps)}
    print(f"timing: one untimed warm-up each, then {rounds} interleaved rounds of {' / '.join(fns)}", file=sys.stderr)
    measured = interleaved_rounds(fns, rounds, warmup=warm, log=lambda line: print("  " + line, file=sys.stderr))
    for key, out in runs.outputs.items():
        print(f"wrote {_save(out, args.out / (args.method if key == 'method' else 'dense'))}")
    handle = runs.handle
    sparse = sum(s.sparse for s in runs.stats.values())
    fallback = sum(s.fallback for s in runs.stats.values())
    outside = sum(s.dense for s in runs.stats.values())
    print(f"model {args.model}  method {args.method} ({handle.config})  backend {handle.backend}  {sparse} sparse / "
          f"{fallback} dense-fallback / {outside} dense outside steps attention calls on {len(handle.modules)} modules "
          f"over {rounds} runs")
    for key, name in (("dense", "dense"), ("method", args.method)):
        if key in measured.times:
            step = Spread.of(measured.times[key]).scaled(1000)
            print(f"{name:>10}: per step {step.text('.1f', ' ms')}, per image {Spread.of(runs.wall[key]).text()} s")
    if not args.no_dense:
        bounds = end_to_end_bounds(handle.method, runs.stats, runs.grids, runs.dense_attention_s, runs.dense_steps_s,
                                   list(handle.modules))
        speedup = measured.speedup("dense", "method", bounds["end_to_end_bound"], bounds["attention_bound"])
        print(f"speedup per step (same seed): {speedup.text()}  "
              f"[dense attention share {bounds['dense_attention_share']:.0%}]")
    print(load_text(measured.load_before, measured.load_after))
    return 0


def inspect(args: argparse.Namespace) -> int:
    """``diffattn inspect``: the per-module table of what the method would do, from one denoiser call."""
    from ..patch.dry_run import dry_run

    if args.model == EMBEDDED and args.height is None and args.width is None:
        from ..pipelines.tiny_shapes.job import TARGET

        args.height = args.width = TARGET  # what `generate` runs on the embedded model (the main job's size)
    if getattr(args, "plan", None) is not None:
        from ..methods.routed import Plan

        plan = Plan.load(args.plan)  # a missing or malformed file fails before any model is loaded
        pipe, kw = load(args)
        kw["generator"] = torch.Generator("cpu").manual_seed(args.seed)
        print(dry_run(pipe, kw, plan, backend=args.backend, temporal_window=args.temporal_window))
        return 0
    knobs = method_knobs(args, embedded=args.model == EMBEDDED)
    pipe, kw = load(args)
    kw["generator"] = torch.Generator("cpu").manual_seed(args.seed)
    print(dry_run(pipe, kw, args.method, **where(args), **knobs))
    return 0
