"""``diffattn demo``: serve the Gradio demo (`diffattn.demo`; needs the ``demo`` extra)."""

from __future__ import annotations

import argparse
from typing import Any

from ..pipelines.load import EMBEDDED
from . import args as opt


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the Gradio demo (needs the 'demo' extra); see `diffattn demo --help`",
        description="Gradio demo: dense vs an attention method.",
    )
    opt.model(p, EMBEDDED, "'tiny' (embedded), a tiny-… family, a path or cached id")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="create a public Gradio share link (off by default)")


def run(args: argparse.Namespace) -> int:
    from ..demo import launch

    launch(args.model, host=args.host, port=args.port, share=args.share)
    return 0
