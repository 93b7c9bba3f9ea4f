"""Quality of the embedded model, measured: the acceptance evaluation at its training size (`evaluate_shipped`,
``scripts/eval_tiny.py``) and the table per way of making an image and resolution (`quality_table`,
``scripts/tiny_quality_table.py``): scorer accuracy with its Wilson 95% interval, pattern-FID against real renders
at the same size, seconds per image, and exact McNemar tests between rows on the same samples (the same captions and
seeds in every row), saying which differences are significant."""

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
from ...pipelines.tiny_shapes.job import class_captions, method_knobs, sample, save_grid, two_stage_batch, upscale_only
from ...pipelines.tiny_shapes.scorer import labels_of, load_scorer, pattern_fid, per_class_accuracy, predict
from ..significance import ALPHA, PairedTest, accuracy_text, mcnemar, proportion
from ..timing import load_average

METHODS = ("dense", "gna", "msw", "proxy", "agent", "freeswim")
TWO_STAGE = ("gna", "freeswim")
"""Refine methods of the two-stage rows (at 2x and above): the training size dense, upscale, refine with these."""
UPSCALE = "upscale only"
"""The control row: the two-stage recipe's stage 1 upscaled bicubically, no refine."""
PER_CLASS = 16
"""Samples per class and cell: 96 per cell, a Wilson interval of about +-9 points at 77%."""


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



def _cell(row: str, scale: int, size: int, images: torch.Tensor, captions: list[str], real: torch.Tensor,
          seconds: float, scorer: Any, knobs: dict[str, Any]) -> dict[str, Any]:
    labels = labels_of(captions)
    correct = (predict(images, scorer) == labels).tolist()
    acc = proportion(correct)
    return {
        "method": row,
        "scale": scale,
        "size": size,
        "tokens": (size // tm.PATCH) ** 2,
        "samples": len(captions),
        "accuracy": acc.value,
        "wilson95": [acc.low, acc.high],
        "per_class": per_class_accuracy(images, labels, scorer),
        "per_sample_correct": correct,
        "pattern_fid": pattern_fid(images, real, scorer),
        "seconds_per_image": seconds / len(captions),
        "knobs": {k: str(v) for k, v in knobs.items()},
    }


def _rows(scale: int, methods: Sequence[str], two_stage: Sequence[str]) -> list[str]:
    rows = list(methods)
    if scale > 1 and two_stage:
        rows += [f"2-stage {m}" for m in two_stage] + [UPSCALE]
    return rows


def quality_table(
    per_class: int = PER_CLASS, per_class_large: int | None = None, scales: Sequence[int] = (1, 2, 4),
    methods: Sequence[str] = METHODS, steps: int = 20, seed: int = 1000, threads: int = 1, weights: Path | None = None,
    out: Path = Path("benchmarks/results/tiny_quality"), two_stage: Sequence[str] = TWO_STAGE, batch: int = 24,
) -> dict[str, Any]:
    """Each row at each scale of the training size, the same captions and seeds (sample ``i``: ``seed + i``) in every
    cell: the single-stage methods (`method_knobs`: the training receptive field), and at scales above 1 the
    two-stage recipe refined with each of ``two_stage`` and the upscale-only control (the recipe's stage 1, upscaled,
    no refine). ``per_class_large`` (default ``per_class``) applies at 4x and above. Writes ``out``.{json,md} and a
    grid per size."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    pipe = tm.tiny_model(weights) if weights else tm.tiny_model()
    scorer = load_scorer()
    cells = []
    load_before = load_average()
    for scale in scales:
        size = tm.RESOLUTION * scale
        k = per_class if scale < 4 or per_class_large is None else per_class_large
        caps = class_captions(seed, k)
        labels = labels_of(caps)
        real = tiny_data.render(tiny_data.sample_scenes(len(caps), seed=seed + 1, labels=labels), size)
        shown: dict[str, torch.Tensor] = {}
        base: torch.Tensor | None = None
        base_s = 0.0
        for row in _rows(scale, methods, two_stage):
            if row == UPSCALE:  # `_rows` puts it after the two-stage rows, whose stage 1 it upscales
                if base is None:
                    raise RuntimeError("the upscale-only row needs a two-stage row before it")
                imgs, secs, knobs = upscale_only(base, size), base_s, {}
            elif row.startswith("2-stage "):
                method = row.removeprefix("2-stage ")
                knobs = method_knobs(method)
                parts, stage1, secs = [], [], 0.0
                for i in range(0, len(caps), batch):
                    t0 = time.perf_counter()
                    images, record = two_stage_batch(pipe, caps[i : i + batch], size, seed, i, steps, method, knobs)
                    secs += time.perf_counter() - t0
                    parts.append(images)
                    stage1.append(record.base)
                    base_s += record.stages[0].seconds if base is None else 0.0
                imgs = torch.cat(parts)
                if base is None:  # every recipe's stage 1 is the same dense run on the same seeds
                    base = torch.cat(stage1)
            else:
                knobs = method_knobs(row)
                handle = None if row == "dense" else apply_attention(pipe, row, **knobs)
                try:
                    imgs, secs = sample(pipe, caps, size, seed, steps, batch=batch)
                finally:
                    if handle is not None:
                        handle.remove()
            cell = _cell(row, scale, size, imgs, caps, real, secs, scorer, knobs)
            cells.append(cell)
            print(json.dumps({k: v for k, v in cell.items() if k != "per_sample_correct"}), flush=True)
            shown[row] = imgs[::k]  # the first sample of each class
        shown["real"] = real[::k]
        save_grid(shown, caps[::k], out.with_name(f"{out.name}_{size}px.png"))
    real_acc = {}
    for scale in sorted({c["scale"] for c in cells}):
        scenes = tiny_data.sample_scenes(96, seed=seed + 2, labels=torch.arange(6).repeat_interleave(16))
        acc = per_class_accuracy(tiny_data.render(scenes, tm.RESOLUTION * scale), scenes.label, scorer)
        real_acc[str(scale)] = sum(acc.values()) / len(acc)
    result = {"steps": steps, "guidance": 3.0, "threads": threads, "seed": seed, "cells": cells,
              "real_accuracy": real_acc, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "seconds": time.perf_counter() - started, "load_average_before": load_before,
              "load_average_after": load_average()}
    write(result, out)
    return result


def merge(parts: Sequence[Path], out: Path) -> dict[str, Any]:
    """Merge result JSONs of `quality_table` (e.g. scales run in parallel processes) into ``out``."""
    loaded = [json.loads(p.read_text()) for p in parts]
    result = {**loaded[0], "cells": [c for p in loaded for c in p["cells"]],
              "real_accuracy": {k: v for p in loaded for k, v in p["real_accuracy"].items()},
              "seconds": sum(p.get("seconds", 0.0) for p in loaded)}
    write(result, out)
    return result


def paired_tests(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Exact McNemar tests on per-sample correctness within each scale: every row against dense, and each two-stage
    row against the upscale-only control (cells without per-sample outcomes are left out)."""
    tests = []
    for scale in sorted({c["scale"] for c in cells}):
        by = {c["method"]: c for c in cells if c["scale"] == scale and "per_sample_correct" in c}
        pairs = [(m, "dense") for m in by if m != "dense" and "dense" in by]
        pairs += [(m, UPSCALE) for m in by if m.startswith("2-stage ") and UPSCALE in by]
        for a, b in pairs:
            t = mcnemar(by[a]["per_sample_correct"], by[b]["per_sample_correct"])
            tests.append({"scale": scale, "a": a, "b": b, **t.to_dict()})
    return tests


def write(result: dict, out: Path) -> None:
    result["paired"] = paired_tests(result["cells"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))


def _acc(c: dict[str, Any]) -> str:
    return accuracy_text(c["accuracy"], c.get("wilson95"))


def markdown(result: dict) -> str:
    """One table per scale (rows: the ways of making an image), then the paired tests and the significant ones."""
    real = ", ".join(f"{result['real_accuracy'][k]:.0%} at {k}x" for k in sorted(result["real_accuracy"]))
    load = result.get("load_average_before")
    lines = [
        f"Scorer accuracy [Wilson 95%] / pattern-FID against real renders at the same size / seconds per image "
        f"({result['steps']} steps, CFG {result['guidance']}, {result['threads']} CPU thread(s), {result['date']}"
        + (f", load average {load[0]:.2f} at the start" if load else "") + "). Real renderings score " + real + ". "
        "Every row of a size samples the same captions and seeds; `2-stage M`: the training size dense, bicubic "
        "upscale, re-noise to 0.7 and the last 70% of the steps at the size with M; `upscale only`: that stage 1 "
        "upscaled, no refine. vs dense: exact McNemar test on per-sample correctness (two-sided p).",
    ]
    tests = {(t["scale"], t["a"], t["b"]): t for t in result.get("paired", [])}
    for scale in sorted({c["scale"] for c in result["cells"]}):
        cells = [c for c in result["cells"] if c["scale"] == scale]
        c0 = cells[0]
        lines += ["", f"### {scale}x: {c0['size']} px, {c0['tokens']} tokens, n = {c0['samples']} per row", "",
                  "| row | accuracy [95%] | vs dense | pattern-FID | s / image |", "|---|---|---|---|---|"]
        for c in cells:
            t = tests.get((scale, c["method"], "dense"))
            vs = "-" if t is None else (f"{t['difference'] * 100:+.0f} pts, p = {t['p']:.2g}"
                                        + (" **significant**" if t["significant"] else ""))
            lines.append(f"| {c['method']} | {_acc(c)} | {vs} | {c['pattern_fid']:.1f} | "
                         f"{c['seconds_per_image']:.2f} |")
    significant = [t for t in result.get("paired", []) if t["significant"]]
    lines += ["", f"Significant differences (p < {ALPHA}, exact McNemar on the same samples):"]
    if significant:
        for t in significant:
            test = PairedTest(t["only_a"], t["only_b"], t["n"], t["p"])
            lines.append(f"- {t['scale']}x: {test.text(t['a'], t['b'])}")
    else:
        lines.append("- none")
    rest = [t for t in result.get("paired", []) if not t["significant"]]
    if rest:
        lines.append(f"Not significant: {len(rest)} other pair(s) (in the JSON's `paired`).")
    if result.get("seconds") is not None:
        lines.append(f"Wall time of the run: {result['seconds'] / 60:.1f} min.")
    return "\n".join(lines)
