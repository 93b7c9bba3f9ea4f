"""The embedded model's job: its sampling recipe (steps, guidance, per-sample seeds), the knobs that give each
method the training receptive field, the class captions, and the captioned image grid."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import torch

from . import data as tiny_data
from . import pipeline as tm

STEPS = 20
GUIDANCE = 3.0


def method_knobs(method: str) -> dict[str, Any]:
    """Knobs that give each method the training receptive field (the 8x8 training token grid) where it has one."""
    grid = tm.TRAIN_GRID
    return {
        "gna": {"window": grid, "stride": (1, 1)},  # every query sees exactly a training-sized neighbourhood
        "msw": {"window": grid},
        "proxy": {"window": grid},
        "freeswim": {"train_grid": grid},  # window branch at the training receptive field, full branch cached
    }.get(method, {})


def class_captions(seed: int, per_class: int = 1) -> list[str]:
    """``per_class`` captions per class, in class order, colours drawn with ``seed``."""
    labels = torch.arange(len(tiny_data.CLASSES)).repeat_interleave(per_class)
    return tiny_data.captions(tiny_data.sample_scenes(len(labels), seed=seed, labels=labels))


def sample(pipe: Any, captions: list[str], size: int, seed: int, steps: int = STEPS,
           batch: int = 48) -> tuple[torch.Tensor, float]:
    """Images ``[N, 3, size, size]`` in [0, 1] and the wall time; sample ``i`` is seeded by ``seed + i`` whatever
    the batching, so runs of different methods see the same noise."""
    out, start = [], time.perf_counter()
    for i in range(0, len(captions), batch):
        caps = captions[i : i + batch]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(caps))]
        out.append(pipe(caps, height=size, width=size, num_inference_steps=steps, guidance_scale=GUIDANCE,
                        generator=gens, output_type="pt").images)
    return torch.cat(out), time.perf_counter() - start


def save_grid(rows: dict[str, torch.Tensor], captions: list[str], path: Path, cell: int = 128) -> Path:
    """A PNG with one row per entry of ``rows`` (label on the left) and one column per caption (text on top)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    wrapped = [textwrap.wrap(c, 20) for c in captions]  # ~6 px per character
    head = 12 * max(len(w) for w in wrapped) + 6
    label_w = 8 * max(len(k) for k in rows) + 10
    canvas = Image.new("RGB", (label_w + cell * len(captions), head + cell * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, lines in enumerate(wrapped):
        for k, line in enumerate(lines):
            draw.text((label_w + j * cell + 3, 3 + 12 * k), line, fill="black", font=font)
    for i, (name, imgs) in enumerate(rows.items()):
        draw.text((4, head + i * cell + cell // 2 - 6), name, fill="black", font=font)
        for j, img in enumerate(imgs):
            arr = (img.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy()
            tile = Image.fromarray(arr).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (label_w + j * cell, head + i * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
