"""`compare`: dense, then each method config, on the same prompts, seeds and steps; speed beside its
bounds, quality vs dense; ``report.json``, ``report.md``, a speedup-vs-quality plot and an image grid.

Speed per config: per-step latency (denoiser-hook timer, `runner.StepTimer`; min / median over all
steps of all prompts), total time, the attention share of step time (wall time inside the attention modules
minus their projections, see `runner.AttentionTimer`), peak memory (`runner.MemoryMeter`, which
says what it measured) and the handle's sparse / fallback / dense call counts.

Bounds per config (`bounds.end_to_end_bounds`): each patched module's FLOP bound (``method.flop_bound``
at the grid it attended, counting only its sparse calls) weighted by that module's dense attention time
gives the bound of the attention part; Amdahl with the dense attention share gives the end-to-end bound.
Token and tile bounds (GNA-like patterns, `diffattn.sim`) are reported at the finest grid.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .bounds import end_to_end_bounds
from .quality import (
    PSNR_CAP_DB,
    ImageMetric,
    TextImageMetric,
    as_batch,
    extract_features,
    fid_from_features,
    load_clip,
    load_feature_extractor,
    load_lpips,
    quality_vs_reference,
)
from .runner import (
    AttentionTimer,
    GridRecorder,
    MemoryMeter,
    RunConfig,
    StepTimer,
    apply_config,
    check_device,
    render,
    resolve_module,
)
from .timing import synchronizer

REFERENCE = "dense (unpatched)"
"""Label of the reference row: the pipeline as loaded, no diffattn installed."""


@dataclasses.dataclass
class _Run:
    """What one config produced over all prompts."""

    images: list[Tensor] = dataclasses.field(default_factory=list)
    steps_s: list[float] = dataclasses.field(default_factory=list)
    totals_s: list[float] = dataclasses.field(default_factory=list)
    attention_s: dict[str, float] = dataclasses.field(default_factory=dict)
    peak_bytes: list[int] = dataclasses.field(default_factory=list)
    memory_kind: str = "unavailable"


def _measure(
    pipe: Any, call_kwargs: dict[str, Any], prompts: Sequence[str], seeds: Sequence[int], modules: dict[str, nn.Module],
    device: torch.device, bar: Any,
) -> _Run:
    sync = synchronizer(device)
    run = _Run(attention_s=dict.fromkeys(modules, 0.0))
    for prompt, seed in zip(prompts, seeds):
        steps = StepTimer(pipe, sync)
        attention = AttentionTimer(modules, sync)
        try:
            with MemoryMeter(device) as mem:
                t0 = time.perf_counter()
                run.images.append(render(pipe, call_kwargs, prompt, seed))
                sync()
                run.totals_s.append(time.perf_counter() - t0)
        finally:
            run.steps_s += steps.close()
            for name, s in attention.close().items():
                run.attention_s[name] += s
        run.memory_kind = mem.kind
        if mem.peak_bytes is not None:
            run.peak_bytes.append(mem.peak_bytes)
        bar.update(1)
    return run


def _speed(run: _Run) -> dict[str, Any]:
    steps = run.steps_s or [t for t in run.totals_s]
    return {
        "step_min_s": min(steps),
        "step_median_s": statistics.median(steps),
        "steps_timed": len(run.steps_s),
        "total_s": sum(run.totals_s),
        "peak_memory_bytes": max(run.peak_bytes) if run.peak_bytes else None,
        "peak_memory_kind": run.memory_kind,
    }


@torch.no_grad()
def compare(
    pipe: Any,
    configs: Sequence[RunConfig],
    prompts: Sequence[str],
    seeds: Sequence[int] | None = None,
    *,
    call_kwargs: dict[str, Any] | None = None,
    backend: str = "auto",
    device: str = "cpu",
    lpips: str | Path | ImageMetric | None = None,
    clip: str | Path | TextImageMetric | None = None,
    scorer: Any = None,
    feature_extractor: str | Path | nn.Module | None = None,
    out_dir: str | Path | None = None,
    warmup: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Dense, then each config in ``configs``, on ``prompts`` with ``seeds`` (default 0, 1, ...).

    call_kwargs: pipeline call arguments besides prompt / generator (steps, size, guidance...).
    lpips, clip, feature_extractor: injected modules or local weight paths (see `quality`); scorer:
        ``(images, prompts) -> [N]`` correct / score (accuracy = mean). None skips each.
    out_dir: write report.json, report.md, speedup_quality.png and grid.png there.
    Returns the report dict (``configs``: one row per config, dense first). Bad input raises before
    any generation, and ``pipe`` is left unpatched whatever happens.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to compare (the prompt list is empty)")
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt")
    if feature_extractor is not None and len(prompts) < 2:
        raise ValueError(f"FID needs >= 2 images per config, got {len(prompts)}; use --num-images >= 2")
    dev = check_device(device)
    lpips_fn, clip_fn, extractor = load_lpips(lpips), load_clip(clip), load_feature_extractor(feature_extractor)
    patched_modules: dict[RunConfig, list[str]] = {}
    for config in configs:  # trial installs: every bad config fails here, before any generation
        handle = apply_config(pipe, config, backend)
        patched_modules[config] = list(handle.modules)
        handle.remove()
    all_modules = {m: resolve_module(pipe, m) for ms in patched_modules.values() for m in ms}
    kw = dict(call_kwargs or {})

    from tqdm.auto import tqdm

    bar = tqdm(total=(1 + len(configs)) * len(prompts), desc="compare", disable=not progress)
    try:
        if warmup:  # first calls pay one-off costs (allocations, plan caches): keep them out of the timings
            render(pipe, kw, prompts[0], seeds[0])
        dense = _measure(pipe, kw, prompts, seeds, all_modules, dev, bar)
        rows = [_row(REFERENCE, dense, dense, None, {}, prompts, lpips_fn, clip_fn, scorer, extractor)]
        for config in configs:
            bar.set_postfix_str(config.label)
            handle = apply_config(pipe, config, backend)
            try:
                recorder = GridRecorder(handle)
                try:
                    if warmup:
                        render(pipe, kw, prompts[0], seeds[0])
                    before = _counts(handle.stats())
                    modules = {m: all_modules[m] for m in handle.modules}
                    run = _measure(pipe, kw, prompts, seeds, modules, dev, bar)
                finally:
                    grids = recorder.close()
                bounds = end_to_end_bounds(handle.method, handle.stats(), grids, dense.attention_s,
                                           sum(dense.steps_s or dense.totals_s), list(handle.modules))
                after = _counts(handle.stats())
                counts = dict(zip(("sparse_calls", "fallback_calls", "dense_calls"), after - before))
                counts = {k: int(v) for k, v in counts.items()} | {"modules": len(handle.modules)}
            finally:
                handle.remove()
            rows.append(_row(config.label, run, dense, bounds, counts, prompts, lpips_fn, clip_fn, scorer, extractor))
            rows[-1]["images"] = run.images
    finally:
        bar.close()
    rows[0]["images"] = dense.images
    report = {
        "meta": {
            "pipeline": type(pipe).__name__,
            "device": str(dev),
            "backend": backend,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "prompts": prompts,
            "seeds": seeds,
            "call_kwargs": {k: v for k, v in kw.items() if isinstance(v, int | float | str | bool)},
            "psnr_cap_db": PSNR_CAP_DB,
            "warmup": warmup,
        },
        "configs": rows,
    }
    if out_dir is not None:
        from .outputs import write_outputs

        write_outputs(report, Path(out_dir))
    return report


def _row(
    label: str, run: _Run, dense: _Run, bounds: dict | None, counts: dict, prompts: Sequence[str],
    lpips: ImageMetric | None, clip: TextImageMetric | None, scorer: Any, extractor: nn.Module | None,
) -> dict[str, Any]:
    speed, ref = _speed(run), _speed(dense)
    row: dict[str, Any] = {"config": label, **speed}
    row["speedup_step_median"] = ref["step_median_s"] / speed["step_median_s"]
    row["speedup_step_min"] = ref["step_min_s"] / speed["step_min_s"]
    row["speedup_total"] = ref["total_s"] / speed["total_s"]
    attn = sum(run.attention_s.values())
    row["attention_share"] = min(1.0, attn / sum(run.steps_s or run.totals_s))
    row.update(counts)
    bounds = bounds or {"end_to_end_bound": 1.0, "attention_bound": 1.0, "flop_bound": 1.0}
    row["bounds"] = bounds
    row["fraction_of_bound"] = row["speedup_step_median"] / bounds["end_to_end_bound"]
    per = [quality_vs_reference(img, ref_img, lpips) for img, ref_img in zip(run.images, dense.images)]
    for key in ("psnr_db", "ssim", "lpips"):
        values = [p[key] for p in per if p[key] is not None]
        row[key] = sum(values) / len(values) if values else None
    row["clip_score"] = row["accuracy"] = row["fid_vs_dense"] = None
    batches = [as_batch(img) for img in run.images]
    if clip is not None:
        row["clip_score"] = _mean([clip(b, [p] * len(b)) for b, p in zip(batches, prompts)])
    if scorer is not None:
        row["accuracy"] = _mean([scorer(b, [p] * len(b)) for b, p in zip(batches, prompts)])
    if extractor is not None:
        feats = torch.cat([extract_features(extractor, b) for b in batches])
        ref_feats = torch.cat([extract_features(extractor, as_batch(img)) for img in dense.images])
        row["fid_vs_dense"] = fid_from_features(ref_feats, feats)
    return row


def _counts(stats: dict[str, Any]) -> Any:
    """Total (sparse, fallback, dense) calls of a handle's stats, as an int64 tensor."""
    return torch.tensor([[s.sparse, s.fallback, s.dense] for s in stats.values()], dtype=torch.long).sum(0)


def _mean(values: list[Any]) -> float:
    flat = torch.cat([torch.as_tensor(v).float().flatten() for v in values])
    return float(flat.mean())
