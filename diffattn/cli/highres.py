"""``diffattn highres``: the high-resolution pipelines from the command line.

diffattn highres --model tiny-pixart-alpha --height 64 --width 64              # two stages, freeswim
diffattn highres --model tiny-sd --height 64 --width 64 --raunet --steps 10    # msw + RAU-Net
diffattn highres --model tiny-wan --height 160 --width 192 --frames 9 --base-height 96 --base-width 128
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from ..methods.knobs import parse_knobs
from . import args as opt
from .inputs import HUB_PROMPT, before_load, load


def add_parser(sub: Any) -> None:
    h = sub.add_parser(
        "highres",
        help="generate above the training resolution: UNets msw (+ --raunet), DiTs two stages (freeswim / gna)",
    )
    opt.model(h, "tiny-pixart-alpha", f"{opt.OFFLINE}, a hub id or a local path")
    opt.size(h, help=" in pixels", what="target ", required=True)
    opt.frames(h, "video models: number of frames")
    opt.method(h, None, "attention method (default: msw on UNets, freeswim or gna on DiTs)")
    opt.knob(h, "a method knob")
    h.add_argument("--raunet", action="store_true", help="UNets: add HiDiffusion's RAU-Net")
    h.add_argument("--strength", type=float, default=0.7, help="DiTs: re-noise strength of stage 2, in (0, 1]")
    opt.steps(h, "denoising steps (tiny default 3, hub default 30)")
    h.add_argument("--base-height", type=int, default=None, help="DiTs: stage-1 height (default: training size)")
    h.add_argument("--base-width", type=int, default=None, help="DiTs: stage-1 width (default: training size)")
    opt.prompt(h, HUB_PROMPT, None)
    opt.seed(h)
    opt.out(h, "diffattn_out")
    opt.dtype(h)


def run(args: argparse.Namespace) -> int:
    """Run ``diffattn highres``."""
    from ..pipelines.highres import default_method, generate_highres, generate_highres_video

    before_load(args)  # --out and the target size, before the model loads
    if args.method is not None:  # bad knobs fail before the model loads
        parse_knobs(args.method, args.knob)

    args.steps = args.steps or (3 if args.model.startswith("tiny-") else 30)
    height, width = args.height, args.width
    args.height = args.width = None  # the loader's own size defaults stay out of the way
    pipe, kw = load(args)
    for key in ("height", "width", "num_frames", "output_type", "prompt"):
        kw.pop(key, None)
    kw.pop("generator", None)
    steps = kw.pop("num_inference_steps", args.steps)
    common = dict(
        method=args.method,
        knobs=parse_knobs(args.method or default_method(pipe), args.knob) or None,
        strength=args.strength,
        num_inference_steps=steps,
        base_height=args.base_height,
        base_width=args.base_width,
        generator=torch.Generator("cpu").manual_seed(args.seed),
        progress=lambda line: print(line, file=sys.stderr),
        **kw,
    )
    if args.frames is not None or hasattr(pipe, "vae_scale_factor_temporal"):
        frames = args.frames or 9
        out, record = generate_highres_video(pipe, args.prompt, height, width, frames, output_type="pil", **common)
        video = out.frames[0]
        args.out.mkdir(parents=True, exist_ok=True)
        target = args.out / "highres.gif"
        video[0].save(target, save_all=True, append_images=list(video[1:]), duration=125, loop=0)
    else:
        out, record = generate_highres(pipe, args.prompt, height, width, raunet=args.raunet, **common)
        args.out.mkdir(parents=True, exist_ok=True)
        target = args.out / "highres.png"
        out.images[0].save(target)
    (args.out / "highres.json").write_text(json.dumps(record.to_dict(), indent=2, default=str))
    print(f"wrote {target}")
    for stage in record.stages:
        calls = {k: sum(s[k] for s in stage.stats.values()) for k in ("sparse", "fallback", "cross", "cross_cached")}
        print(
            f"{stage.name}: {stage.height}x{stage.width}, {stage.steps} steps, {stage.method} {stage.knobs}, "
            f"{stage.seconds:.2f} s, calls {calls}"
        )
    return 0
