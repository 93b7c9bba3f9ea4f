"""CPU speedup of diffattn's methods over dense SDPA (and NATTEN's CPU path), with the issue's targets.

The benchmark itself lives in `diffattn.report.kernel_bench` (timing, bounds and targets in
`diffattn.report`); this is its command line. Run it against the checkout with ``pip install -e .``
(or ``PYTHONPATH=.``).

Usage: ``python scripts/speedup.py [--quick] [--cases SUBSTR] [--no-natten] [--out DIR]``.
Writes ``DIR/speedup.json`` and ``DIR/speedup.md`` and prints the table plus PASS/MISS lines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from diffattn.report.kernel_bench import log, report_markdown, run_benchmark


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output directory")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per case (after 1 warm-up)")
    p.add_argument("--quick", action="store_true", help="small grids and 2 repeats (smoke test)")
    p.add_argument("--cases", default="", help="only cases whose name contains this substring")
    p.add_argument("--no-natten", action="store_true", help="skip the NATTEN row")
    p.add_argument("--natten-repeats", type=int, default=2, help="timed repeats of the NATTEN row")
    p.add_argument(
        "--natten-heads-per-call", type=int, default=0, help="heads per NATTEN call; 0 = as many as fit 8 GB"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    warnings.filterwarnings("ignore", module=r"torch\.nn\.attention\.flex_attention")
    start = time.perf_counter()
    try:
        payload = run_benchmark(
            args.quick, repeats, args.cases, not args.no_natten, args.natten_repeats, args.natten_heads_per_call
        )
    except ValueError as e:
        log(f"speedup.py: {e} (--cases)")
        return 2
    payload["meta"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
        "repeats": repeats,
        "runtime_s": time.perf_counter() - start,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speedup.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = report_markdown(payload)
    (args.out / "speedup.md").write_text(md)
    print(md)
    log(f"wrote {args.out / 'speedup.json'} and {args.out / 'speedup.md'} in {payload['meta']['runtime_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
