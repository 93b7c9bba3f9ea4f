"""CPU speedup of diffattn's methods over dense SDPA (and NATTEN's CPU path), with the issue's targets.

The benchmark itself lives in `diffattn.report.bench.kernel` (timing, bounds and targets in
`diffattn.report`); this is its command line. Run it against the checkout with ``pip install -e .``
(or ``PYTHONPATH=.``).

Usage: ``python scripts/speedup.py [--quick] [--cases SUBSTR] [--no-natten] [--out DIR]``.
Writes ``DIR/speedup.json`` and ``DIR/speedup.md`` and prints the table plus PASS/MISS lines.

``--e2e [--device cpu|cuda] [--dtype bf16|fp16|fp32] [--scale S] [--repeats N] [--cases SUBSTR]``: the
end-to-end denoiser-step benchmark (`diffattn.report.bench.e2e`: FLUX-like, SDXL UNet and Wan-like
denoisers at real width and reduced depth, dense vs each method beside the Amdahl bound, plus the
attention-only memory rows). Writes ``DIR/e2e.json`` and ``DIR/e2e.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffattn.report.bench import e2e, kernel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output directory")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per case after 1 warm-up (5; --e2e: 3)")
    p.add_argument("--quick", action="store_true", help="small grids and 2 repeats (smoke test)")
    p.add_argument("--cases", default="", help="only cases whose name contains this substring")
    p.add_argument("--no-natten", action="store_true", help="skip the NATTEN row")
    p.add_argument("--natten-repeats", type=int, default=2, help="timed repeats of the NATTEN row")
    p.add_argument(
        "--natten-heads-per-call", type=int, default=0, help="heads per NATTEN call; 0 = as many as fit 8 GB"
    )
    group = p.add_argument_group("end-to-end benchmark (--e2e)")
    group.add_argument("--e2e", action="store_true", help="run the end-to-end denoiser-step benchmark instead")
    group.add_argument("--device", default="cpu", help="cpu or cuda[:N] (cuda: triton backend)")
    group.add_argument("--dtype", default="bf16", choices=sorted(e2e.DTYPES), help="model and attention dtype")
    group.add_argument("--scale", type=float, default=1.0, help="token grid side / full size, in (0, 1]")
    group.add_argument(
        "--memory-sides", default="128,256", help="grid sides of the attention-only memory rows (256 = 65,536 tokens)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.e2e:
        return e2e.run_and_write(
            args.out, args.device, args.dtype, args.scale, args.repeats, args.cases, args.memory_sides, argv
        )
    return kernel.run_and_write(
        args.out, args.quick, args.repeats, args.cases, not args.no_natten, args.natten_repeats,
        args.natten_heads_per_call, argv,
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
