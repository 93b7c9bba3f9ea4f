"""Train the embedded tiny shapes model (and its CNN scorer) on the CPU, reproducibly, and ship the weights.

    python scripts/train_tiny.py                       # scorer, then ~95 min of diffusion training, then ship
    python scripts/train_tiny.py --minutes 2 --out /tmp/smoke --no-ship   # smoke run
    python scripts/train_tiny.py --ship-only runs/tiny/best                # copy a checkpoint into the package

The shipped weights came from four warm-started stages; their exact commands are in docs/tiny_model.md.
The training itself is `diffattn.pipelines.tiny_shapes.train`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffattn.pipelines.tiny_shapes import train


def _class_weight(text: str) -> tuple[str, float]:
    name, _, value = text.rpartition("=")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not CLASS=W") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/tiny"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=95.0, help="wall-clock budget of the diffusion training")
    ap.add_argument("--max-steps", type=int, default=0,
                    help="stop after this many steps; the learning rate then decays over steps (0: over --minutes)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--cfg", type=float, default=3.0, help="guidance scale of the periodic evaluations")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false")
    ap.add_argument("--zero-init", action="store_true", help="adaLN-Zero initialisation (DiT)")
    ap.add_argument("--init-from", type=Path, default=None, help="start from this checkpoint's weights")
    ap.add_argument("--t-mean", type=float, default=1.0, help="mean of the logit-normal timestep density")
    ap.add_argument("--t-uniform", type=float, default=0.0, help="fraction of timesteps drawn uniformly")
    ap.add_argument("--scorer-steps", type=int, default=600)
    ap.add_argument("--class-weight", type=_class_weight, action="append", default=[], metavar="CLASS=W",
                    help="sample CLASS W times as often as the others (repeatable), e.g. --class-weight square=3")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=300)
    ap.add_argument("--eval-per-class", type=int, default=8)
    ap.add_argument("--no-ship", dest="ship", action="store_false")
    ap.add_argument("--ship-only", type=Path, default=None, help="ship this checkpoint directory and exit")
    train.run(ap.parse_args())


if __name__ == "__main__":
    main()
