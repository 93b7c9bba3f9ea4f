"""FreeSwim's cost against dense attention at 4x the training token count, with its FLOP bound.

Model: Wan 2.1 1.3B at its real width (12 heads x 128 = 1536, FFN 8960) and reduced depth (``--layers``,
default 1), one latent frame, through the whole ``WanPipeline`` with classifier-free guidance; dense vs
freeswim (``train_grid=(30, 52)``, ``--cache-steps``) at 60x104 tokens (4x the training tokens), beside
FreeSwim's FLOP and tile bounds. The benchmark lives in `diffattn.report.bench.freeswim` (bounds in
`diffattn.report.bounds.freeswim_step_bounds`); this is its command line. Run it against the checkout with
``pip install -e .`` (or ``PYTHONPATH=.``).

Usage: ``python scripts/bench_freeswim.py [--steps 4] [--repeats 2] [--layers 1] [--dtype bf16] [--quick]``.
Writes ``benchmarks/results/freeswim.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffattn.report.bench import freeswim

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--cache-steps", type=int, default=2)
    p.add_argument("--dtype", default="bf16", choices=sorted(freeswim.DTYPES))
    p.add_argument("--quick", action="store_true", help="2x the tokens (1.4x per side) instead of 4x: a smoke run")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    return freeswim.run_and_write(
        args.out, args.steps, args.repeats, args.layers, args.cache_steps, args.dtype, args.quick
    )


if __name__ == "__main__":
    raise SystemExit(main())
