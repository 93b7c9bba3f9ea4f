"""``diffattn simulate``: analytical speedup bounds of a GNA config (token, tile, Amdahl, roofline)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..methods.knobs import parse_ints


def add_parser(sub: Any) -> None:
    s = sub.add_parser("simulate", help="analytical speedup bounds of a GNA config (token, tile, Amdahl, roofline)")
    s.add_argument("--grid", type=parse_ints, required=True, help="token grid, e.g. 256,256 or 30,48,80 (frames first)")
    s.add_argument("--window", type=parse_ints, required=True, help="GNA window per axis, >= 1")
    s.add_argument("--stride", type=parse_ints, default=1, help="GNA stride per axis, in [1, window] (default 1)")
    s.add_argument("--dilation", type=parse_ints, default=1, help="GNA dilation per axis, >= 1 (default 1)")
    s.add_argument(
        "--q-tile", type=parse_ints, default=None, help="Q tile shape (default: H100 FNA 128 / 16,8 / 4,4,8)"
    )
    s.add_argument("--kv-tile", type=parse_ints, default=None, help="KV tile shape (default: as --q-tile's default)")
    s.add_argument("--attention-share", type=float, default=None, help="measured attention share of step time, [0, 1]")
    s.add_argument("--gpu", default=None, help="add a roofline estimate for this GPU (accepted: h100)")
    s.add_argument("--heads", type=int, default=24, help="heads for the roofline estimate, >= 1")
    s.add_argument("--head-dim", type=int, default=128, help="head dim for the roofline estimate, >= 1")
    s.add_argument("--batch", type=int, default=1, help="batch for the roofline estimate, >= 1")
    s.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from ..sim import simulate

    grid = args.grid if isinstance(args.grid, tuple) else (args.grid,)
    result = simulate(
        grid,
        args.window,
        args.stride,
        args.dilation,
        q_tile=args.q_tile,
        kv_tile=args.kv_tile,
        attention_share=args.attention_share,
        gpu=args.gpu,
        batch=args.batch,
        heads=args.heads,
        head_dim=args.head_dim,
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format())
    return 0
