"""The CPU engine benchmark of issue 22: GNA on the cpu backend against dense SDPA at the embedded model's
shapes and at `speedup.py`'s 2-D rows, quiet and busy (two spinning processes), before and after.

The benchmark lives in `diffattn.report.bench.engine`; this is its command line. Run it against the
checkout with ``pip install -e .`` (or ``PYTHONPATH=.``), on a machine nothing else is using: the load
average is recorded beside the rows.

Usage: ``python scripts/bench_engine.py [--quick] [--rounds N] [--cases SUBSTR] [--baseline REF|none]
[--no-busy] [--spinners N] [--no-threads-study] [--out DIR]``. Writes ``DIR/engine.json`` and
``DIR/engine.md`` and prints the table plus PASS/MISS lines. ``--calibrate`` instead times the CPU flash
path on one thread and fits the engine's cost model (``DIR/engine_calibration.{json,md}``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffattn.report.bench import engine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output directory")
    p.add_argument("--quick", action="store_true", help="the 32x32 and 64x64 rows only, 3 rounds (smoke test)")
    p.add_argument("--rounds", type=int, default=None, help="timed interleaved rounds per case after 1 warm-up (7)")
    p.add_argument("--cases", default="", help="only cases whose name contains this substring")
    p.add_argument(
        "--baseline",
        default=engine.BASELINE_REF,
        help=f"git ref of the engine timed as 'before' ({engine.BASELINE_REF}: main before issue 22); none: skip",
    )
    p.add_argument("--no-busy", action="store_true", help="skip the busy condition")
    p.add_argument("--spinners", type=int, default=2, help="spinning processes in the busy condition")
    p.add_argument("--no-threads-study", action="store_true", help="skip the OpenMP / one-thread engine rows")
    p.add_argument("--calibrate", action="store_true", help="fit the engine's cost model instead")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        raise SystemExit(f"--rounds {args.rounds} must be >= 1")
    if args.spinners < 0:
        raise SystemExit(f"--spinners {args.spinners} must be >= 0")
    return engine.run_and_write(
        args.out, args.quick, args.rounds, args.cases, args.baseline, not args.no_busy, args.spinners,
        not args.no_threads_study, args.calibrate, argv,
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
