"""Calibrated plan vs the uniform GNA window at the same predicted bound, on the embedded model at 2x and 4x its
training size (64 and 128 px): scorer accuracy with Wilson 95% intervals and PSNR against dense on held-out captions
and seeds, and the calibration wall time. The driver is `diffattn.report.bench.calibrate`; this is its command line.
Run it against the checkout with ``pip install -e .`` (or ``PYTHONPATH=.``), on a quiet machine.

Usage: ``python scripts/bench_calibrate.py [--per-class 16] [--threads 1] [--quick]``.
Writes ``benchmarks/results/calibrate.json`` and ``.md`` (and ``calibrate_<size>px.png`` sample grids).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffattn.report.bench import calibrate

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", type=int, nargs="+", default=[2, 4], help="multiples of the 32 px training size")
    p.add_argument("--per-class", type=int, default=16, help="held-out samples per class (6 classes)")
    p.add_argument("--calib-captions", type=int, default=6, help="calibration captions (one per class)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: 6 held-out samples, 2 captions, 8 steps")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    return calibrate.run_and_write(
        args.out, tuple(args.scales), args.per_class, args.calib_captions, args.steps, args.seed, args.batch,
        args.threads, quick=args.quick, argv=argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
