"""Quality of the embedded model, measured: the acceptance evaluation at its training size (`evaluate_shipped`,
``scripts/eval_tiny.py``) and the table per attention method and resolution (`quality_table`,
``scripts/tiny_quality_table.py``): scorer accuracy, pattern-FID, seconds per image."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...patch import apply_attention
from ...pipelines.tiny_shapes import data as tiny_data
from ...pipelines.tiny_shapes import pipeline as tm
from ...pipelines.tiny_shapes.job import class_captions, method_knobs, sample, save_grid
from ...pipelines.tiny_shapes.scorer import labels_of, load_scorer, pattern_fid, per_class_accuracy

METHODS = ("dense", "gna", "msw", "proxy", "agent", "freeswim")


def evaluate_shipped(
    per_class: int = 16, steps: int = 20, seed: int = 2000, threads: int = 1, weights: Path | None = None,
    out: Path = Path("benchmarks/results/tiny_eval.json"), grid: Path = Path("docs/tiny_samples.png"),
) -> dict[str, Any]:
    """Samples ``per_class`` seeds x 6 classes at the training size (dense), scores them against real renderings
    of the same captions, and pattern-FID against real renderings of other scenes; writes ``out`` and ``grid``."""
    torch.set_num_threads(threads)
    pipe = tm.tiny_model(weights) if weights else tm.tiny_model()
    scorer = load_scorer()
    caps = class_captions(seed, per_class)
    labels = labels_of(caps)
    imgs, secs = sample(pipe, caps, tm.RESOLUTION, seed, steps)
    same = tiny_data.render(tiny_data.sample_scenes(len(caps), seed=seed, labels=labels), tm.RESOLUTION)
    other = tiny_data.render(tiny_data.sample_scenes(len(caps), seed=seed + 1, labels=labels), tm.RESOLUTION)
    gen_acc = per_class_accuracy(imgs, labels, scorer)
    real_acc = per_class_accuracy(same, labels, scorer)
    result = {
        "samples": len(caps),
        "steps": steps,
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    k = min(4, per_class)
    idx = torch.arange(len(caps)).view(6, per_class)[:, :k].T.reshape(-1)  # k seeds of each class
    rows = {f"sample {i}": imgs[idx[i * 6 : (i + 1) * 6]] for i in range(k)}
    rows["real"] = same[idx[:6]]  # the real rendering of sample 0's caption
    heads = [f"{tiny_data.CLASSES[i]} (sample 0: {caps[j]})" for i, j in enumerate(idx[:6].tolist())]
    save_grid(rows, heads, grid)
    return result



def quality_table(
    per_class: int = 8, per_class_large: int = 4, scales: Sequence[int] = (1, 2, 4), methods: Sequence[str] = METHODS,
    steps: int = 20, seed: int = 1000, threads: int = 1, weights: Path | None = None,
    out: Path = Path("benchmarks/results/tiny_quality"),
) -> dict[str, Any]:
    """Each method (`method_knobs`: the training receptive field) at each scale of the training size; the same
    captions and seeds in every cell. Writes ``out``.{json,md} and a grid per size."""
    torch.set_num_threads(threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    pipe = tm.tiny_model(weights) if weights else tm.tiny_model()
    scorer = load_scorer()
    cells = []
    for scale in scales:
        size = tm.RESOLUTION * scale
        per_class = per_class if scale < 4 else per_class_large
        caps = class_captions(seed, per_class)
        labels = labels_of(caps)
        real_scenes = tiny_data.sample_scenes(len(caps), seed=seed + 1, labels=labels)
        real = tiny_data.render(real_scenes, size)
        shown: dict[str, torch.Tensor] = {}
        for method in methods:
            handle = None if method == "dense" else apply_attention(pipe, method, **method_knobs(method))
            try:
                imgs, secs = sample(pipe, caps, size, seed, steps, batch=24)
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
        save_grid(shown, caps[::per_class], out.with_name(f"{out.name}_{size}px.png"))
    real_acc = {}
    for scale in sorted({c["scale"] for c in cells}):
        scenes = tiny_data.sample_scenes(96, seed=seed + 2, labels=torch.arange(6).repeat_interleave(16))
        acc = per_class_accuracy(tiny_data.render(scenes, tm.RESOLUTION * scale), scenes.label, scorer)
        real_acc[str(scale)] = sum(acc.values()) / len(acc)
    result = {"steps": steps, "guidance": 3.0, "threads": threads, "cells": cells,
              "real_accuracy": real_acc, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write(result, out)
    return result



def merge(parts: Sequence[Path], out: Path) -> dict[str, Any]:
    """Merge result JSONs of `quality_table` (e.g. scales run in parallel processes) into ``out``."""
    loaded = [json.loads(p.read_text()) for p in parts]
    result = {**loaded[0], "cells": [c for p in loaded for c in p["cells"]],
              "real_accuracy": {k: v for p in loaded for k, v in p["real_accuracy"].items()}}
    write(result, out)
    return result


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

