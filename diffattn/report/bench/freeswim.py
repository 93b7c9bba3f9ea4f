"""FreeSwim's cost against dense attention at 4x the training token count, with its FLOP bound.
``scripts/bench_freeswim.py`` is the command line (`run_and_write`).

Model: Wan 2.1 1.3B at its real width (`workloads.wan_pipeline`: 12 heads x 128 = 1536, FFN 8960) and reduced
depth (``layers``, default 1), one latent frame. Training grid 30x52 tokens (480x832); the target is 2x per
side, 60x104 tokens (960x1664, 4x the tokens). The text encoder is the tiny one (16 text tokens instead of 512:
the cross-attention it feeds is a few percent of a step at this width either way).

Both runs go through the whole ``WanPipeline`` with classifier-free guidance (a cond and an uncond forward per
step), timed round-robin in one process after a warm-up (`timing.time_round_robin`), min of ``repeats``:
  - dense: the model's own attention;
  - freeswim: ``train_grid=(30, 52)``, ``cache_steps`` 2: per step W on both passes (the cond one skips its
    cross-attention) plus F (a dense forward on the cond pass) every ``cache_steps`` steps.

Bounds: `bounds.freeswim_step_bounds` (per-step matmul FLOPs of dense and FreeSwim, and the tile bound of the
CPU plan that runs). The goal is measured speedup >= 0.8 x the FLOP bound.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
from pathlib import Path

import torch

from ...patch import apply_attention, attention
from ..bounds import freeswim_step_bounds
from ..timing import Speedup, labels, load_average, load_text, range_text, time_round_robin
from .common import log
from .workloads import WAN_FFN, WAN_HEAD_DIM, WAN_HEADS, wan_pipeline

TRAIN = (30, 52)  # 480x832 / 16
GOAL = 0.8
TEXT_TOKENS = 16
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def step_bounds(grid: tuple[int, int], text: int, layers: int, cache_steps: int, frames: int = 1) -> dict:
    """`bounds.freeswim_step_bounds` on the Wan 2.1 1.3B width, trained at `TRAIN`."""
    return freeswim_step_bounds(
        grid, text, layers, cache_steps, TRAIN, WAN_HEADS, WAN_HEAD_DIM, WAN_FFN, frames=frames
    )  # fmt: skip


def run_and_write(
    out: Path,
    steps: int = 4,
    repeats: int = 2,
    layers: int = 1,
    cache_steps: int = 2,
    dtype: str = "bf16",
    quick: bool = False,
) -> int:
    """Time dense and freeswim; write ``out/freeswim.json`` and ``.md`` (``freeswim_quick.*`` with ``quick``:
    2x the tokens instead of 4x) and print the Markdown. Returns 0."""
    args = argparse.Namespace(
        steps=steps, repeats=repeats, layers=layers, cache_steps=cache_steps, dtype=dtype, quick=quick, out=out
    )  # what the progress line shows
    grid = (42, 74) if quick else (2 * TRAIN[0], 2 * TRAIN[1])  # tokens per frame at the target
    height, width = 16 * grid[0], 16 * grid[1]
    pipe = wan_pipeline(layers, DTYPES[dtype])
    call = dict(
        prompt="a red fox",
        negative_prompt="",
        height=height,
        width=width,
        num_frames=1,
        num_inference_steps=steps,
        guidance_scale=5.0,
        max_sequence_length=TEXT_TOKENS,
        output_type="latent",
    )
    handle = apply_attention(pipe, "freeswim", train_grid=TRAIN, cache_steps=cache_steps)  # a bad config fails here
    handle.remove()
    stats: dict = {}

    def run_dense() -> object:
        return pipe(generator=torch.Generator().manual_seed(0), **call)

    def run_freeswim() -> object:
        with attention(pipe, "freeswim", train_grid=TRAIN, cache_steps=cache_steps) as h:
            result = pipe(generator=torch.Generator().manual_seed(0), **call)
        stats.update(h.stats())
        return result

    log(f"grid {grid} ({math.prod(grid)} tokens, {math.prod(grid) / math.prod(TRAIN):.2f}x training), {args}")
    times = time_round_robin({"dense": run_dense, "freeswim": run_freeswim}, repeats, log=log, label="wan")
    bound = step_bounds(grid, TEXT_TOKENS, layers, cache_steps)
    # analytic only (too slow to time here): the same at Wan's 81 frames = 21 latent frames, 512 text tokens
    video = step_bounds(grid, 512, layers, cache_steps, frames=21)
    dense, fs = min(times["dense"]), min(times["freeswim"])
    speedup = dense / fs
    paired = _paired(times, bound["flop_bound"])
    row = {
        "grid": grid,
        "train_grid": TRAIN,
        "tokens_ratio": math.prod(grid) / math.prod(TRAIN),
        "steps": steps,
        "cache_steps": cache_steps,
        "layers": layers,
        "dtype": dtype,
        "dense_s": times["dense"],
        "freeswim_s": times["freeswim"],
        "speedup": speedup,
        **bound,
        "achieved_of_flop_bound": speedup / bound["flop_bound"],
        # the timing protocol's words: the spread of the per-round paired ratios, judged against the FLOP bound
        "speedup_spread": [paired.spread.low, paired.spread.high],
        "labels": labels(speedup, paired.spread, bound["flop_bound"]),
        "flop_bound_21_frames": video["flop_bound"],
        "achieved_of_tile_bound": speedup / bound["tile_bound"],
        "goal": GOAL,
        "cross_calls": sum(s.cross for s in stats.values()),
        "cross_cached": sum(s.cross_cached for s in stats.values()),
        "fallback_calls": sum(s.fallback for s in stats.values()),
    }
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_average": load_average(),
    }
    out.mkdir(parents=True, exist_ok=True)
    name = "freeswim_quick" if quick else "freeswim"
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "row": row}, indent=2))
    md = report_markdown(row, video, meta)
    (out / f"{name}.md").write_text(md)
    print(md, end="")
    return 0


def _paired(times: dict[str, list[float]], bound: float) -> Speedup:
    return Speedup.paired(times["dense"], times["freeswim"], bound)


def report_markdown(row: dict, video: dict, meta: dict) -> str:
    """The Markdown report of one `run_and_write` row, with the analytic 21-frame bounds ``video``."""
    grid = row["grid"]
    verdict = "PASS" if row["achieved_of_flop_bound"] >= GOAL else "MISS"
    dense, fs = min(row["dense_s"]), min(row["freeswim_s"])
    md = [
        f"# freeswim vs dense, Wan 2.1 1.3B width, {row['layers']} layer(s), {row['dtype']}, CPU ({meta['date']})",
        "",
        "| grid | x train tokens | steps | cache_steps | dense s (min) | freeswim s (min) | speedup | FLOP bound "
        "| of bound | tile bound | of tile bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {grid[0]}x{grid[1]} | {row['tokens_ratio']:.2f} | {row['steps']} | {row['cache_steps']} | {dense:.2f} | "
        f"{fs:.2f} | {row['speedup']:.2f}x {range_text(row.get('speedup_spread'))} | {row['flop_bound']:.2f}x "
        f"| {row['achieved_of_flop_bound']:.2f} | "
        f"{row['tile_bound']:.2f}x | {row['achieved_of_tile_bound']:.2f} |",
        "",
        f"{verdict}: measured speedup is {row['achieved_of_flop_bound']:.2f} of the FLOP bound (goal >= {GOAL}); "
        f"in words: {'; '.join(row.get('labels', [])) or '-'} (min of each; spread: the per-round paired ratios; "
        f"{load_text(meta.get('load_average'), meta.get('load_average'))}). "
        f"Window {row['window']} = {row['window_density']:.3f} of the grid; attention is "
        f"{row['attention_share_dense']:.0%} of a dense step's FLOPs. Cross-attention: {row['cross_calls']} run, "
        f"{row['cross_cached']} from F's cache; {row['fallback_calls']} fallbacks.",
        "",
        f"Analytic FLOP bound for the real video shape (21 latent frames of {grid[0]}x{grid[1]}, 512 text tokens), "
        f"where attention is {video['attention_share_dense']:.0%} of a dense step: {video['flop_bound']:.2f}x.",
    ]
    return "\n".join(md) + "\n"
