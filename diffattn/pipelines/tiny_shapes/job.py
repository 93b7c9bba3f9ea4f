"""The embedded model's job: its sampling recipe (steps, guidance, per-sample seeds), the knobs that give each
method the training receptive field, the class captions, the three ways of making a large image that the main
job compares (dense at the target, the two-stage recipe, the upscale-only control) and the captioned image grid.

Sample ``i`` of a job is always seeded by ``seed + i``, whatever the batching, so every way of making an image
starts from the same noise for the same sample."""

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
TARGET = 4 * tm.RESOLUTION
"""The main job's target size (128 px = 32x32 tokens, 16x the training tokens): attention is about 43% of a
dense step there on a quiet 2-core machine (77% at 256 px, where a dense image costs 8x more)."""
STRENGTH = 0.7
"""The two-stage recipe re-noises the upscaled stage-1 image to this strength (FreeSwim's) and re-runs
``int(steps * STRENGTH)`` steps at the target."""


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


def job_scenes(n: int, seed: int) -> tiny_data.Scenes:
    """``n`` scenes cycling through the classes (so any batch mixes them), drawn with ``seed``."""
    return tiny_data.sample_scenes(n, seed=seed, labels=torch.arange(n) % len(tiny_data.CLASSES))


def job_captions(n: int, seed: int) -> list[str]:
    """The captions of `job_scenes`."""
    return tiny_data.captions(job_scenes(n, seed))


def generators(seed: int, start: int, n: int) -> list[torch.Generator]:
    """One CPU generator per sample: sample ``start + j`` seeded by ``seed + start + j``."""
    return [torch.Generator().manual_seed(seed + start + j) for j in range(n)]


def dense_batch(pipe: Any, captions: list[str], size: int, seed: int, start: int = 0,
                steps: int = STEPS) -> torch.Tensor:
    """Images ``[N, 3, size, size]`` in [0, 1] of samples ``start ...`` generated at ``size`` in one call."""
    return pipe(captions, height=size, width=size, num_inference_steps=steps, guidance_scale=GUIDANCE,
                generator=generators(seed, start, len(captions)), output_type="pt").images


def two_stage_batch(pipe: Any, captions: list[str], size: int, seed: int, start: int = 0, steps: int = STEPS,
                    method: str | None = "gna", knobs: dict[str, Any] | None = None,
                    strength: float = STRENGTH, layers: Any = None, backend: str = "auto") -> tuple[torch.Tensor, Any]:
    """The two-stage recipe (`diffattn.pipelines.highres.generate_highres`): ``steps`` dense steps at the training
    size, bicubic upscale, re-noise to ``strength``, ``int(steps * strength)`` steps at ``size`` with ``method``
    (``knobs`` default: `method_knobs`, the training receptive field). Returns the images ``[N, 3, size, size]``
    in [0, 1] and the `HighResRecord` (``record.base``: the stage-1 images in [-1, 1]). ``layers``, ``backend``:
    as `diffattn.apply_attention`'s."""
    from ..highres import generate_highres

    knobs = method_knobs(method) if knobs is None and method is not None else knobs
    out, record = generate_highres(
        pipe, captions, size, size, method=method, knobs=knobs or None, strength=strength, num_inference_steps=steps,
        base_height=tm.RESOLUTION, base_width=tm.RESOLUTION, generator=generators(seed, start, len(captions)),
        output_type="pt", guidance_scale=GUIDANCE, layers=layers, backend=backend,
    )
    return out.images, record


def upscale_only(base: torch.Tensor, size: int) -> torch.Tensor:
    """The control: the stage-1 images (``[N, 3, h, w]`` in [-1, 1]) upscaled bicubically to ``size``, no refine;
    ``[N, 3, size, size]`` in [0, 1]."""
    from ..highres import upsample_latents

    return (upsample_latents(base, (size, size)) / 2 + 0.5).clamp(0, 1)


def sample(pipe: Any, captions: list[str], size: int, seed: int, steps: int = STEPS,
           batch: int = 48) -> tuple[torch.Tensor, float]:
    """Images ``[N, 3, size, size]`` in [0, 1] and the wall time; sample ``i`` is seeded by ``seed + i`` whatever
    the batching, so runs of different methods see the same noise."""
    out, start = [], time.perf_counter()
    for i in range(0, len(captions), batch):
        out.append(dense_batch(pipe, captions[i : i + batch], size, seed, i, steps))
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
