"""Acceptance evaluation of the embedded tiny model at its training resolution (dense attention).

    python scripts/eval_tiny.py --per-class 16 --steps 20

Samples ``per_class`` seeds x 6 classes at 32 px, reports the scorer's accuracy (overall and per class) against
real renderings of the same captions, and pattern-FID of samples vs real renderings of other scenes of the same
classes (and real vs real as the floor). Writes benchmarks/results/tiny_eval.json and docs/tiny_samples.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffattn.report.bench.tiny_quality import evaluate_shipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/tiny_eval.json"))
    ap.add_argument("--grid", type=Path, default=Path("docs/tiny_samples.png"))
    args = ap.parse_args()
    evaluate_shipped(args.per_class, args.steps, args.seed, args.threads, args.weights, args.out, args.grid)


if __name__ == "__main__":
    main()
