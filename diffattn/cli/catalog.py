"""``diffattn methods | models | presets``: what can be applied, to what, with which defaults."""

from __future__ import annotations

import argparse
from typing import Any

from ..methods import list_methods
from ..models import supported_models
from ..tiny import TINY_MODELS

COMMANDS = ("methods", "models", "presets")


def add_parsers(sub: Any) -> None:
    sub.add_parser("methods", help="list attention methods")
    sub.add_parser("models", help="list supported denoisers and the offline tiny models")
    sub.add_parser("presets", help="list the default knobs, layers and steps per (method, model family)")


def presets_table() -> str:
    """The presets as an aligned text table: method, family, knobs, layers, steps, source."""
    from ..patch.presets import table

    columns = ("method", "family", "knobs", "layers", "steps", "source")
    rows = [dict(zip(columns, columns))] + table()
    widths = {c: max(len(r[c]) for r in rows) for c in columns[:-1]}
    lines = ["  ".join([*(r[c].ljust(widths[c]) for c in columns[:-1]), r["source"]]) for r in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.command == "methods":
        print("\n".join(list_methods()))
    elif args.command == "models":
        print("denoisers:", ", ".join(supported_models()))
        print("embedded trained model: tiny (shapes, 32px)")
        print("offline tiny models (random weights):", ", ".join(TINY_MODELS))
    else:
        print(presets_table())
    return 0
