"""The command line's shared options, each declared once, with typed parsers that refuse a bad value at parse time
(before anything loads) with one line naming the value and the accepted range; a command passes its own default
and, where the wording differs, its own help. Knob values are parsed by `diffattn.methods.knobs` (one knob syntax
everywhere).

Counts and sizes are plain decimal integers everywhere (``1e12`` is not an int, here as in the knob syntax).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ..methods.knobs import parse_ints, parse_knobs, split_assignment
from ..report.timing import MIN_ROUNDS
from ..tiny import TINY_MODELS

BACKENDS = ["auto", "triton", "cpu", "reference"]
DTYPES = ["float32", "bfloat16", "float16"]
OFFLINE = ", ".join(TINY_MODELS)

#: accepted ranges of the counts and sizes (inclusive); memory is checked separately, per model (`inputs`)
MAX_STEPS = 1000  # the schedulers' training timesteps: more steps than that repeat timesteps
MAX_SIDE = 1_000_000  # pixels per side; whether a size fits is the memory estimate's call
MAX_FRAMES = 10_000
MAX_IMAGES = 1_000_000  # samples of compare / eval (each is a generation per config)
MAX_ROUNDS = 1000  # interleaved timed rounds of the timing protocol (at least its MIN_ROUNDS)
MAX_SEED = 2**63 - 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (``diffattn generate: error: ...``), not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _ranged(convert: Callable[[str], Any], kind: str, article: str, lo: Any, hi: Any) -> Callable[[str], Any]:
    """An argparse type: ``convert(text)`` in ``[lo, hi]``, its errors naming ``article kind`` and the range."""
    accepted = f"accepted: {article} {kind} in [{lo}, {hi}]"

    def parse(text: str) -> Any:
        try:
            value = convert(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {article} {kind}; {accepted}") from None
        if not lo <= value <= hi:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{value} is out of range; {accepted}")
        return value

    parse.__name__ = f"{kind} in [{lo}, {hi}]"
    return parse


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: a decimal int in ``[lo, hi]``."""
    return _ranged(int, "int", "an", lo, hi)


def float_in(lo: float, hi: float) -> Callable[[str], float]:
    """An argparse type: a finite decimal number in ``[lo, hi]``."""
    return _ranged(float, "number", "a", lo, hi)


def nonempty_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give some text, or leave the option out for its default")
    return text


def device_name(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (whether CUDA is present is checked before the model loads)."""
    kind, sep, index = text.partition(":")
    if kind in ("cpu", "cuda") and (not sep or (kind == "cuda" and index.isdigit())):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device; accepted: cpu, cuda, cuda:N")


def model(p: argparse.ArgumentParser, default: str, help: str) -> None:
    p.add_argument("--model", default=default, help=help)


def method(p: argparse.ArgumentParser, default: str | None, help: str) -> None:
    p.add_argument("--method", default=default, help=help)


def gna_knobs(p: argparse.ArgumentParser) -> None:
    """``--window/--stride/--dilation``: GNA's knobs as options of their own (None when not given)."""
    p.add_argument("--window", type=parse_ints, default=None, help="GNA window per axis, e.g. 16 or 16,16 or 4,16,16")
    p.add_argument("--stride", type=parse_ints, default=None, help="GNA stride per axis (default: = window, blocked)")
    p.add_argument("--dilation", type=parse_ints, default=None, help="GNA dilation per axis (default 1)")


def knob(p: argparse.ArgumentParser, help: str) -> None:
    """``--knob NAME=VALUE``, repeatable: ``(name, text)`` pairs, typed by the method once it is known."""
    p.add_argument("--knob", type=split_assignment, action="append", default=[], metavar="NAME=VALUE", help=help)


def size(p: argparse.ArgumentParser, *, help: str | None = None, required: bool = False, what: str = "") -> None:
    """``--height`` and ``--width`` (``help`` names their default; ``what`` prefixes "height"/"width")."""
    for side in ("height", "width"):
        text = f"{what}{side}{help}" if help is not None else f"{what}{side} in pixels"
        p.add_argument(f"--{side}", type=int_in(1, MAX_SIDE), default=None, required=required, help=text)


def frames(p: argparse.ArgumentParser, help: str = "video frames (video models)") -> None:
    p.add_argument("--frames", type=int_in(1, MAX_FRAMES), default=None, help=help)


def steps(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=None, help=f"{help}; 1 to {MAX_STEPS}")


def num_images(p: argparse.ArgumentParser, help: str = "samples (prompts cycle); default: one per prompt") -> None:
    p.add_argument("--num-images", type=int_in(1, MAX_IMAGES), default=None, help=f"{help}; 1 to {MAX_IMAGES}")


def rounds(p: argparse.ArgumentParser, help: str) -> None:
    """``--rounds``: interleaved timed rounds of the timing protocol (`diffattn.report.timing`, at least 3)."""
    p.add_argument("--rounds", type=int_in(MIN_ROUNDS, MAX_ROUNDS), default=None,
                   help=f"{help}; {MIN_ROUNDS} to {MAX_ROUNDS}")  # fmt: skip


def prompt(p: argparse.ArgumentParser, default: str | None, help: str | None) -> None:
    p.add_argument("--prompt", type=nonempty_text, default=default, help=help)


def seed(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0, help=help)


def backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=BACKENDS)


def device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda or cuda:N")


def dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default=None, choices=DTYPES, help="hub models only")


def out(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", type=Path, default=Path(default), help="output directory (created if missing)")


def verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="log backend choice and fallbacks")


def torch_dtype(args: Any) -> Any:
    """``--dtype`` as a torch dtype, or None (the loader's default)."""
    import torch

    return getattr(torch, args.dtype) if getattr(args, "dtype", None) else None


def method_knobs(args: argparse.Namespace, *, embedded: bool = False) -> dict[str, Any]:
    """The method's knobs from ``--knob`` and ``--window/--stride/--dilation``; a ValueError/TypeError for an unknown
    method, knob name or unparsable value, or GNA's options given to another method (before any model is loaded).

    GNA without knobs: blocked 16x16 on the pipelines (stride = window), and on the embedded model (``embedded``)
    sliding (stride 1) with the training grid as the window unless ``--window`` says otherwise; other methods
    without knobs: their family preset, on the embedded model the training receptive field (`job.method_knobs`)."""
    knobs = parse_knobs(args.method, args.knob)
    given = [f"--{k}" for k in ("window", "stride", "dilation") if getattr(args, k, None) is not None]
    if args.method != "gna":
        if given:
            raise ValueError(
                f"{'/'.join(given)} {'is' if len(given) == 1 else 'are'} GNA's option(s) (--method gna); give "
                f"{args.method}'s knobs as --knob NAME=VALUE, e.g. --knob window=8 (see `diffattn presets`)"
            )
    elif given:
        if knobs:
            raise ValueError(f"give GNA's knobs either as {'/'.join(given)} or as --knob, not both")
        if embedded and args.window is None:
            from ..pipelines.tiny_shapes.job import method_knobs as trained

            window: Any = trained("gna")["window"]
        else:
            window = 16 if args.window is None else args.window
        stride = args.stride if args.stride is not None else (1 if embedded else window)
        return {"window": window, "stride": stride, "dilation": 1 if args.dilation is None else args.dilation}
    if knobs:
        return knobs
    if embedded:
        from ..pipelines.tiny_shapes.job import method_knobs as trained

        return trained(args.method)
    return {"window": 16, "stride": 16, "dilation": 1} if args.method == "gna" else {}


def print_error(prog: str, error: BaseException) -> None:
    """``prog: error: message`` on one line (a multi-line message is joined)."""
    text = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {text}", file=sys.stderr)
