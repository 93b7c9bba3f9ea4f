"""The command line's shared options, each declared once; a command passes its own default and, where the
wording differs, its own help. Values are parsed by `diffattn.methods.knobs` (one knob syntax everywhere)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..methods.knobs import parse_ints, split_assignment
from ..tiny import TINY_MODELS

BACKENDS = ["auto", "triton", "cpu", "reference"]
DTYPES = ["float32", "bfloat16", "float16"]
OFFLINE = ", ".join(TINY_MODELS)


def model(p: argparse.ArgumentParser, default: str, help: str) -> None:
    p.add_argument("--model", default=default, help=help)


def method(p: argparse.ArgumentParser, default: str | None, help: str) -> None:
    p.add_argument("--method", default=default, help=help)


def gna_knobs(p: argparse.ArgumentParser) -> None:
    """``--window/--stride/--dilation``: GNA's knobs as options of their own."""
    p.add_argument("--window", type=parse_ints, default=None, help="GNA window per axis, e.g. 16 or 16,16 or 4,16,16")
    p.add_argument("--stride", type=parse_ints, default=None, help="GNA stride per axis (default: = window, blocked)")
    p.add_argument("--dilation", type=parse_ints, default=1, help="GNA dilation per axis")


def knob(p: argparse.ArgumentParser, help: str) -> None:
    """``--knob NAME=VALUE``, repeatable: ``(name, text)`` pairs, typed by the method once it is known."""
    p.add_argument("--knob", type=split_assignment, action="append", default=[], metavar="NAME=VALUE", help=help)


def size(p: argparse.ArgumentParser, *, help: str | None = None, required: bool = False, what: str = "") -> None:
    """``--height`` and ``--width`` (``help`` names their default; ``what`` prefixes "height"/"width")."""
    for side in ("height", "width"):
        text = f"{what}{side}{help}" if help is not None else None
        p.add_argument(f"--{side}", type=int, default=None, required=required, help=text)


def frames(p: argparse.ArgumentParser, help: str = "video frames (video models)") -> None:
    p.add_argument("--frames", type=int, default=None, help=help)


def steps(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--steps", type=int, default=None, help=help)


def num_images(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--num-images", type=int, default=None, help=help)


def rounds(p: argparse.ArgumentParser, help: str) -> None:
    """``--rounds``: interleaved timed rounds of the timing protocol (`diffattn.report.timing`, at least 3)."""
    p.add_argument("--rounds", type=int, default=None, help=help)


def prompt(p: argparse.ArgumentParser, default: str | None, help: str | None) -> None:
    p.add_argument("--prompt", default=default, help=help)


def seed(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--seed", type=int, default=0, help=help)


def backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=BACKENDS)


def dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default=None, choices=DTYPES, help="hub models only")


def out(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", type=Path, default=Path(default), help="output directory")


def verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="log backend choice and fallbacks")


def torch_dtype(args: Any) -> Any:
    """``--dtype`` as a torch dtype, or None (the loader's default)."""
    import torch

    return getattr(torch, args.dtype) if getattr(args, "dtype", None) else None
