"""Quality of the embedded tiny model per way of making an image and per resolution: scorer accuracy with its Wilson
95% interval, pattern-FID against real renders at the same size, seconds per image, exact McNemar tests between rows.

    python scripts/tiny_quality_table.py                      # the full table: n = 96 per cell (16 per class)
    python scripts/tiny_quality_table.py --quick              # 1 per class (n = 6): checks it runs, times it
    python scripts/tiny_quality_table.py --scales 4 --out runs/tq4 &   # scales in parallel ...
    python scripts/tiny_quality_table.py --merge runs/tq*.json         # ... then merged

Rows: dense, gna (window = training grid 8x8, stride 1), msw (window 8x8), proxy (window 8x8), agent (defaults),
freeswim (train_grid 8x8); at 2x and 4x also the two-stage recipe refined with gna and with freeswim (32 px dense,
bicubic upscale, re-noise to 0.7, the last 70% of the steps at the size) and the upscale-only control (that stage 1
upscaled, no refine). Columns: 1x, 2x, 4x the training resolution per side (32, 64, 128 px). Every row of a size
samples the same captions and seeds, so rows are compared by paired tests; the Markdown says which differences are
significant. The full run takes the --quick run's time x 16 (the samples per cell), about an hour on one thread
(measured figures in docs/tiny_model.md). Writes benchmarks/results/tiny_quality.{json,md} and a grid per size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffattn.report.bench.tiny_quality import METHODS, PER_CLASS, TWO_STAGE, merge, quality_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=PER_CLASS, help=f"samples per class and cell ({PER_CLASS})")
    ap.add_argument("--per-class-large", type=int, default=None, help="samples per class at 4x (default: --per-class)")
    ap.add_argument("--quick", action="store_true", help="1 sample per class: checks the run and times it")
    ap.add_argument("--scales", default="1,2,4")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--two-stage", default=",".join(TWO_STAGE), help="refine methods of the two-stage rows ('' none)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", type=Path, default=None, help="checkpoint directory (default: the shipped one)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output path stem (default benchmarks/results/tiny_quality, with --quick tiny_quality_quick)")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="merge these result JSONs (e.g. scales run in parallel processes) into --out and exit")
    args = ap.parse_args()
    out = args.out or Path("benchmarks/results/tiny_quality" + ("_quick" if args.quick else ""))
    if args.merge:
        merge(args.merge, out)
        return
    per_class = 1 if args.quick else args.per_class
    quality_table(
        per_class, None if args.quick else args.per_class_large, [int(s) for s in args.scales.split(",")],
        args.methods.split(","), args.steps, args.seed, args.threads, args.weights, out,
        [m for m in args.two_stage.split(",") if m],
    )


if __name__ == "__main__":
    main()
