"""``diffattn generate`` (dense, then the method, same seed; both timed) and ``diffattn inspect`` (the per-module
table of what the method would do, from one denoiser call)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..patch import apply_attention
from ..pipelines.load import EMBEDDED
from . import args as opt
from .inputs import load, method_knobs, where

GENERATE_HELP = "generate once dense and once accelerated with the same seed; time both"
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
    g = sub.add_parser("generate", help=GENERATE_HELP)
    _add_run_args(g)
    opt.out(g, "diffattn_out")
    g.add_argument("--no-dense", action="store_true", help="skip the dense reference run")
    i = sub.add_parser("inspect", help=INSPECT_HELP)
    _add_run_args(i)
    i.add_argument("--plan", type=Path, default=None, help="a calibrated plan JSON (diffattn calibrate), not --method")


def _run(pipe: Any, kw: dict[str, Any], seed: int) -> tuple[Any, float]:
    call = dict(kw, generator=torch.Generator("cpu").manual_seed(seed))
    start = time.perf_counter()
    out = pipe(**call)
    return out, time.perf_counter() - start


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


def generate(args: argparse.Namespace) -> int:
    if args.model == EMBEDDED:  # the embedded trained model: its own job (accuracy, PSNR/SSIM, captioned grid)
        from .shapes import generate_tiny

        return generate_tiny(args)
    knobs = method_knobs(args)
    pipe, kw = load(args)
    # Validate knob values, preset, layers and backend on this pipeline before any generation: a
    # trial install that is removed at once (apply/remove is bit-exact).
    apply_attention(pipe, args.method, **where(args), **knobs).remove()
    args.out.mkdir(parents=True, exist_ok=True)
    dense_time = None
    if not args.no_dense:
        print("dense run:", file=sys.stderr)
        out, dense_time = _run(pipe, kw, args.seed)
        print(f"wrote {_save(out, args.out / 'dense')}")
    handle = apply_attention(pipe, args.method, **where(args), **knobs)
    try:
        print(f"{args.method} run ({handle.config}):", file=sys.stderr)
        out, fast_time = _run(pipe, kw, args.seed)
        print(f"wrote {_save(out, args.out / args.method)}")
        outside = sum(st.dense for st in handle.stats().values())
        stats = (
            f"{handle.sparse_calls} sparse / {handle.fallback_calls} dense-fallback / {outside} dense outside "
            f"steps attention calls on {len(handle.modules)} modules"
        )
    finally:
        handle.remove()
    print(f"model {args.model}  method {args.method}  backend {handle.backend}  {stats}")
    if dense_time is not None:
        print(
            f"dense {dense_time:.3f} s   {args.method} {fast_time:.3f} s   "
            f"speedup {dense_time / fast_time:.2f}x (same seed)"
        )
    else:
        print(f"{args.method} {fast_time:.3f} s")
    return 0


def inspect(args: argparse.Namespace) -> int:
    """``diffattn inspect``: the per-module table of what the method would do, from one denoiser call."""
    from ..patch.dry_run import dry_run

    if getattr(args, "plan", None) is not None:
        from ..methods.routed import Plan

        plan = Plan.load(args.plan)  # a missing or malformed file fails before any model is loaded
        pipe, kw = load(args)
        kw["generator"] = torch.Generator("cpu").manual_seed(args.seed)
        print(dry_run(pipe, kw, plan, backend=args.backend, temporal_window=args.temporal_window))
        return 0
    if args.model == EMBEDDED:
        from .shapes import cli_knobs

        knobs = cli_knobs(args)
    else:
        knobs = method_knobs(args)
    pipe, kw = load(args)
    kw["generator"] = torch.Generator("cpu").manual_seed(args.seed)
    print(dry_run(pipe, kw, args.method, **where(args), **knobs))
    return 0
