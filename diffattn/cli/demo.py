"""``diffattn demo``: serve the Gradio demo (`diffattn.demo`; needs the ``demo`` extra).

The server's operator chooses what the page may do: the models offered (``--model``, repeatable, each loaded once
at start), the largest side, step count and frame count a request may ask for (defaults per kind of model in
``diffattn.demo.DEFAULT_LIMITS``), and how many requests may wait (``--queue-size``). The page can change none of it.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..pipelines.load import EMBEDDED
from . import args as opt


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the Gradio demo (needs the 'demo' extra); see `diffattn demo --help`",
        description="Gradio demo: dense vs an attention method, on the models offered here.",
    )
    p.add_argument(
        "--model", action="append", default=None,
        help="a model the page may pick, repeatable (default: tiny, the embedded model): 'tiny', a tiny-… family, "
        "a local path or a cached hub id; each is loaded once, at start",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only; any other "
                   "address is warned about: anyone reaching it can run generations)")  # fmt: skip
    p.add_argument("--port", type=opt.int_in(1, 65535), default=7860)
    p.add_argument("--share", action="store_true", help="create a public Gradio share link (off by default)")
    p.add_argument("--max-side", type=opt.int_in(1, opt.MAX_SIDE), default=None,
                   help="largest height/width in pixels a request may ask (default per model: embedded 256, tiny-… "
                   "512, others 1536)")  # fmt: skip
    p.add_argument("--max-steps", type=opt.int_in(1, opt.MAX_STEPS), default=None,
                   help="most denoising steps a request may ask (default per model: embedded 100, tiny-… 50, "
                   "others 100)")  # fmt: skip
    p.add_argument("--max-frames", type=opt.int_in(1, opt.MAX_FRAMES), default=None,
                   help="most video frames a generation may draw (default per model: tiny-… 33, others 81)")
    p.add_argument("--queue-size", type=opt.int_in(1, 1000), default=None,
                   help="requests that may wait beyond the running one (default 8); more are refused")


def run(args: argparse.Namespace) -> int:
    from ..demo import QUEUE_SIZE, default_limits, launch

    models = list(dict.fromkeys(args.model or [EMBEDDED]))
    caps = {"max_side": args.max_side, "max_steps": args.max_steps, "max_frames": args.max_frames}
    limits = {m: default_limits(m, **caps) for m in models}
    queue_size = QUEUE_SIZE if args.queue_size is None else args.queue_size
    launch(models, host=args.host, port=args.port, share=args.share, limits=limits, queue_size=queue_size)
    return 0
