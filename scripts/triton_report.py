"""Compile-time report of the Triton block-sparse kernel for sm80 and sm90, without a GPU.

For the FLUX-4K and HunyuanVideo-720p GNA presets it builds the plans, asks the kernel which
autotune configs it keeps for each launch (full tiles, partial tiles), compiles each with
``triton.compile`` for a `GPUTarget` (triton's bundled ptxas makes the CUBIN) and prints per kept
config: registers, local memory (spills) and the stack from the CUBIN (``cuobjdump -res-usage``,
bundled with triton), shared memory (triton's launch metadata, against the GPU's limit) and the
number of K/V buffers of the sparse-key loop (the ring depth of its async copies in the TTGIR).
That is the speed proxy on machines without a GPU; no timing is claimed. The report itself lives in
`diffattn.report.bench.compile_report`; this is its command line.

Usage: python scripts/triton_report.py [--arch 80 90] [--dtype bf16] [--dim 128] [--json PATH]
Exit status 1 when a kept config breaks the must-haves (``--check``): spills, over the shared
memory limit, or fewer K/V buffers than 3 (sm90) / 2 (sm80).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("triton_report compiles for real GPUs: unset TRITON_INTERPRET")

from diffattn.report.bench import compile_report  # noqa: E402  (after the TRITON_INTERPRET check)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities, e.g. 80 90")
    p.add_argument("--dtype", choices=sorted(compile_report.DTYPES), default="bf16")
    p.add_argument("--dim", type=int, default=128, help="head dim")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    p.add_argument("--check", action="store_true", help="exit 1 when a kept config breaks the must-haves")
    p.add_argument("--quick", action="store_true", help="only the first kept config per launch (CI)")
    args = p.parse_args(argv)
    return compile_report.run_and_print(args.arch, args.dtype, args.dim, args.json, args.check, args.quick)


if __name__ == "__main__":
    sys.exit(main())
