"""Acceptance evaluation of the embedded tiny model at its training resolution (dense attention).

    python scripts/eval_tiny.py --per-class 16 --steps 20

Samples ``per_class`` seeds x 6 classes at 32 px, reports the scorer's accuracy (overall and per class) against
real renderings of the same captions, and pattern-FID of samples vs real renderings of other scenes of the same
classes (and real vs real as the floor). Writes benchmarks/results/tiny_eval.json and docs/tiny_samples.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffattn import tiny_data  # noqa: E402
from diffattn.pipelines import tiny_model as tm  # noqa: E402
from diffattn.tiny_job import class_captions, sample, save_grid  # noqa: E402
from diffattn.tiny_quality import labels_of, load_scorer, pattern_fid, per_class_accuracy  # noqa: E402


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
    torch.set_num_threads(args.threads)
    pipe = tm.tiny_model(args.weights) if args.weights else tm.tiny_model()
    scorer = load_scorer()
    caps = class_captions(args.seed, args.per_class)
    labels = labels_of(caps)
    imgs, secs = sample(pipe, caps, tm.RESOLUTION, args.seed, args.steps)
    same = tiny_data.render(tiny_data.sample_scenes(len(caps), seed=args.seed, labels=labels), tm.RESOLUTION)
    other = tiny_data.render(tiny_data.sample_scenes(len(caps), seed=args.seed + 1, labels=labels), tm.RESOLUTION)
    gen_acc = per_class_accuracy(imgs, labels, scorer)
    real_acc = per_class_accuracy(same, labels, scorer)
    result = {
        "samples": len(caps),
        "steps": args.steps,
        "guidance": 3.0,
        "accuracy": sum(gen_acc.values()) / len(gen_acc),
        "per_class": gen_acc,
        "real_accuracy": sum(real_acc.values()) / len(real_acc),
        "real_per_class": real_acc,
        "pattern_fid": pattern_fid(imgs, other, scorer),
        "pattern_fid_real_vs_real": pattern_fid(same, other, scorer),
        "seconds_per_image": secs / len(caps),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    k = min(4, args.per_class)
    idx = torch.arange(len(caps)).view(6, args.per_class)[:, :k].T.reshape(-1)  # k seeds of each class
    rows = {f"sample {i}": imgs[idx[i * 6 : (i + 1) * 6]] for i in range(k)}
    rows["real"] = same[idx[:6]]  # the real rendering of sample 0's caption
    heads = [f"{tiny_data.CLASSES[i]} (sample 0: {caps[j]})" for i, j in enumerate(idx[:6].tolist())]
    save_grid(rows, heads, args.grid)


if __name__ == "__main__":
    main()
