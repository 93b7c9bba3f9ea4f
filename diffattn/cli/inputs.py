"""What a command runs, from its parsed arguments: the pipeline and its call arguments, the method's knobs, and
where ``apply_attention`` patches. Every input check here happens before any model is loaded or run."""

from __future__ import annotations

import argparse
from typing import Any

from ..methods.knobs import parse_knobs
from ..pipelines.load import EMBEDDED, load_pipeline
from ..tiny import TINY_MODELS, tiny_call_kwargs
from .args import torch_dtype

#: prompt of hub models when the command line names none
HUB_PROMPT = "a red fox in the snow, highly detailed"


def load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Pipeline and call kwargs: the embedded model, tiny offline models, or a folder / hub id."""
    if args.model == EMBEDDED:
        from .shapes import tiny_inputs

        pipe, captions, size, steps = tiny_inputs(args)
        return pipe, {"prompt": captions[0], "height": size, "width": size, "num_inference_steps": steps}
    try:
        pipe = load_pipeline(args.model, dtype=torch_dtype(args))
    except ValueError as e:  # the loader's message says what to give instead; no traceback
        raise SystemExit(str(e)) from e
    if args.model in TINY_MODELS:
        size = 256 if args.model == "tiny-sd" else None
        kw = tiny_call_kwargs(args.model, seed=args.seed, height=args.height or size, width=args.width or size)
        kw["num_inference_steps"] = args.steps or kw["num_inference_steps"]
        kw["output_type"] = "pil"
        return pipe, kw
    kw: dict[str, Any] = {"prompt": args.prompt or HUB_PROMPT, "num_inference_steps": args.steps or 30}
    for key, value in (("height", args.height), ("width", args.width), ("num_frames", args.frames)):
        if value is not None:
            kw[key] = value
    return pipe, kw


def method_knobs(args: argparse.Namespace) -> dict[str, Any]:
    """The method's knobs from ``--knob`` and ``--window/--stride/--dilation`` (GNA without knobs: blocked 16x16);
    a ValueError/TypeError for an unknown method, knob name or unparsable value (before any model is loaded)."""
    knobs = parse_knobs(args.method, args.knob)
    if args.method == "gna" and not knobs:
        window = 16 if args.window is None else args.window  # the offline default: blocked 16x16
        knobs = {"window": window, "stride": args.stride or window, "dilation": args.dilation}
    elif args.window is not None or args.stride is not None:
        raise ValueError("--window/--stride/--dilation are GNA's knobs; give other knobs as --knob NAME=VALUE")
    return knobs


def where(args: argparse.Namespace) -> dict[str, Any]:
    """``apply_attention``'s module, backend and temporal choices from the command line."""
    return {"layers": args.layers, "backend": args.backend, "temporal_window": args.temporal_window}
