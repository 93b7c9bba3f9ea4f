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
import json
import time
from pathlib import Path

import torch

import diffattn  # noqa: E402
from diffattn import tiny_data  # noqa: E402
from diffattn.pipelines import tiny_model as tm  # noqa: E402
from diffattn.tiny_job import class_captions, method_knobs, sample, save_grid  # noqa: E402
from diffattn.tiny_quality import labels_of, load_scorer, pattern_fid, per_class_accuracy  # noqa: E402

METHODS = ("dense", "gna", "msw", "proxy", "agent", "freeswim")


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
        parts = [json.loads(p.read_text()) for p in args.merge]
        result = {**parts[0], "cells": [c for p in parts for c in p["cells"]],
                  "real_accuracy": {k: v for p in parts for k, v in p["real_accuracy"].items()}}
        write(result, args.out)
        return
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pipe = tm.tiny_model(args.weights) if args.weights else tm.tiny_model()
    scorer = load_scorer()
    cells = []
    for scale in (int(s) for s in args.scales.split(",")):
        size = tm.RESOLUTION * scale
        per_class = args.per_class if scale < 4 else args.per_class_large
        caps = class_captions(args.seed, per_class)
        labels = labels_of(caps)
        real_scenes = tiny_data.sample_scenes(len(caps), seed=args.seed + 1, labels=labels)
        real = tiny_data.render(real_scenes, size)
        shown: dict[str, torch.Tensor] = {}
        for method in args.methods.split(","):
            handle = None if method == "dense" else diffattn.apply_attention(pipe, method, **method_knobs(method))
            try:
                imgs, secs = sample(pipe, caps, size, args.seed, args.steps, batch=24)
            finally:
                if handle is not None:
                    handle.remove()
            acc = per_class_accuracy(imgs, labels, scorer)
            cell = {
                "method": method,
                "scale": scale,
                "size": size,
                "tokens": (size // tm.PATCH) ** 2,
                "samples": len(caps),
                "accuracy": sum(acc.values()) / len(acc),
                "per_class": acc,
                "pattern_fid": pattern_fid(imgs, real, scorer),
                "seconds_per_image": secs / len(caps),
                "knobs": {k: str(v) for k, v in method_knobs(method).items()},
            }
            cells.append(cell)
            print(json.dumps(cell), flush=True)
            shown[method] = imgs[::per_class]  # the first sample of each class
        save_grid(shown, caps[::per_class], args.out.with_name(f"{args.out.name}_{size}px.png"))
    real_acc = {}
    for scale in sorted({c["scale"] for c in cells}):
        scenes = tiny_data.sample_scenes(96, seed=args.seed + 2, labels=torch.arange(6).repeat_interleave(16))
        acc = per_class_accuracy(tiny_data.render(scenes, tm.RESOLUTION * scale), scenes.label, scorer)
        real_acc[str(scale)] = sum(acc.values()) / len(acc)
    result = {"steps": args.steps, "guidance": 3.0, "threads": args.threads, "cells": cells,
              "real_accuracy": real_acc, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write(result, args.out)


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))


def markdown(result: dict) -> str:
    scales = sorted({c["scale"] for c in result["cells"]})
    real = ", ".join(f"{result['real_accuracy'][k]:.0%} at {k}x" for k in sorted(result["real_accuracy"]))
    methods = list(dict.fromkeys(c["method"] for c in result["cells"]))
    by = {(c["method"], c["scale"]): c for c in result["cells"]}
    head = "| method | " + " | ".join(
        f"{s}x ({tm.RESOLUTION * s}px, {by[(methods[0], s)]['tokens']} tok, n={by[(methods[0], s)]['samples']})"
        for s in scales
    ) + " |"
    lines = [
        f"Scorer accuracy / pattern-FID / seconds per image ({result['steps']} steps, CFG {result['guidance']}, "
        f"{result['threads']} CPU thread, {result['date']}). Real renderings score "
        + real + ".",
        "",
        head,
        "|" + "---|" * (len(scales) + 1),
    ]
    for m in methods:
        row = [
            f"{c['accuracy']:.0%} / {c['pattern_fid']:.1f} / {c['seconds_per_image']:.2f} s" if c else "-"
            for c in (by.get((m, s)) for s in scales)
        ]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
