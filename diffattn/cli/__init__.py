"""``diffattn`` command line.

diffattn generate                       # offline default: the embedded shapes model at 2x its training size
diffattn generate --model tiny-sd       # random-weight tiny SD, 256x256, GNA blocked 16x16 (structure only)
diffattn generate --model stabilityai/stable-diffusion-xl-base-1.0 --method gna --window 32 ...
diffattn inspect --model tiny-wan --height 192 --width 256   # per module: grid, text/extra tokens, bound
diffattn simulate --grid 256,256 --window 80,80 --stride 16,16 --gpu h100   # analytical bounds
diffattn highres --model tiny-pixart-alpha --height 64 --width 64   # two-stage high resolution (docs/highres.md)
diffattn compare --prompts prompts.txt --config "gna window=8 stride=8" --config msw --out report/
diffattn eval --prompts prompts.txt --inception pt_inception.pth --config msw   # FID / CLIP, torchrun-ready
diffattn calibrate --model tiny --target min_bound=1.3 --out plan.json   # per-module/step plan (docs/calibrate.md)
diffattn inspect --model tiny --plan plan.json                          # what the plan does per module
diffattn methods | diffattn models | diffattn presets

One module per command (``generate`` holds generate and inspect, ``report`` compare and eval, ``catalog`` the
listings); ``args`` declares the shared options once, ``inputs`` turns arguments into a pipeline, its call
arguments and the method's knobs. ``python -m diffattn.cli`` runs the same (torchrun uses it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from . import calibrate, catalog, demo, generate, highres, report, simulate
from .args import ArgumentParser, print_error


def _user_errors() -> tuple[type[BaseException], ...]:
    """What bad input raises (one line, exit 2; ``-v`` adds the traceback): bad values, unreadable or unwritable
    paths, a missing optional dependency, a request too big for memory, weights that fail their check."""
    import torch

    from ..pipelines.tiny_shapes.pipeline import WeightsCheckError

    return (ValueError, TypeError, OSError, ImportError, MemoryError, torch.OutOfMemoryError, WeightsCheckError)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="diffattn", description="Training-free sparse attention for diffusers pipelines.")
    sub = p.add_subparsers(dest="command", required=True)
    generate.add_parsers(sub)
    simulate.add_parser(sub)
    demo.add_parser(sub)
    report.add_parsers(sub)
    catalog.add_parsers(sub)
    highres.add_parser(sub)
    calibrate.add_parser(sub)
    return p


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in catalog.COMMANDS:
        return catalog.run(args)
    if args.command == "demo":
        return demo.run(args)
    if args.command == "highres":
        return highres.run(args)
    if args.command == "calibrate":
        return calibrate.run(args)
    if args.command in ("compare", "eval"):
        return report.run(args)
    if args.command == "inspect":
        return generate.inspect(args)
    return simulate.run(args) if args.command == "simulate" else generate.generate(args)


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status (0 ok, 2 bad input: one ``diffattn: error: ...`` line on stderr)."""
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # --help (0) or a bad argument (2, already printed on one line)
        return e.code if isinstance(e.code, int) else 2
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    try:
        return _dispatch(args)
    except _user_errors() as e:
        if verbose:
            traceback.print_exc()
        print_error("diffattn", e)
        return 2


__all__ = ["build_parser", "main"]
