"""Quality of the embedded tiny model per attention method and resolution: scorer accuracy, pattern-FID, time.

    python scripts/tiny_quality_table.py --per-class 8 --per-class-large 4

Rows: dense, gna (window = training grid 8x8, stride 1), msw (window 8x8), proxy (window 8x8), agent (defaults),
freeswim (train_grid 8x8: window branch plus the cached full branch's cross-attention).
Columns: 1x, 2x, 4x the training resolution per side (32, 64, 128 px). Each cell samples the same captions and
seeds; pattern-FID compares them with real renderings of *other* scenes of the same classes at the same resolution
(few samples: FID is biased upward, compare rows, not absolute values).
Writes benchmarks/results/tiny_quality.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffattn.report.bench.tiny_quality import METHODS, merge, quality_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=8, help="samples per class at 1x and 2x")
    ap.add_argument("--per-class-large", type=int, default=4, help="samples per class at 4x")
    ap.add_argument("--scales", default="1,2,4")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", type=Path, default=None, help="checkpoint directory (default: the shipped one)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/tiny_quality"))
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="merge these result JSONs (e.g. scales run in parallel processes) into --out and exit")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    quality_table(
        args.per_class, args.per_class_large, [int(s) for s in args.scales.split(",")], args.methods.split(","),
        args.steps, args.seed, args.threads, args.weights, args.out,
    )


if __name__ == "__main__":
    main()
