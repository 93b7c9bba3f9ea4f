"""`compare`: dense and each method config on the same prompts, seeds and steps; speed beside its
bounds, quality vs dense; ``report.json``, ``report.md``, a speedup-vs-quality plot and an image grid.

Timing follows `diffattn.report.timing`: one untimed warm-up per config, then rounds interleaved config by
config (dense, config 1, config 2, dense, ...), one round per prompt (the prompts are cycled when there are
fewer than 3, for timing only); each config is installed before its render and removed after it, untimed.
Speed per config: per-step latency (denoiser-hook timer, `runner.StepTimer`; min / median over all timed
steps, and the per-round median with its min-max), the speedup (per-round paired ratios of the per-step
medians, median [min-max], with the protocol's words), total time of the first pass over the prompts, the
attention share of step time (wall time inside the attention modules minus their projections, see
`runner.AttentionTimer`), peak memory (`runner.MemoryMeter`, which says what it measured), the handle's
sparse / fallback / dense call counts and the load average.

Bounds per config (`bounds.end_to_end_bounds`): each patched module's FLOP bound (``method.flop_bound``
at the grid it attended, counting only its sparse calls) weighted by that module's dense attention time
gives the bound of the attention part; Amdahl with the dense attention share gives the end-to-end bound.
Token and tile bounds (GNA-like patterns, `diffattn.sim`) are reported at the finest grid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
from collections.abc import Callable, Iterator, Sequence
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
    GridRecorder,
    MemoryMeter,
    RunConfig,
    TimedCall,
    add_call_counts,
    apply_config,
    check_device,
    render,
    resolve_module,
)
from .significance import wilson
from .timing import MIN_ROUNDS, Speedup, Spread, interleaved_rounds

REFERENCE = "dense (unpatched)"
"""Label of the reference row: the pipeline as loaded, no diffattn installed."""


@dataclasses.dataclass
class _Run:
    """What one config produced: the images of the first pass over the prompts, and every timed round."""

    images: list[Tensor] = dataclasses.field(default_factory=list)
    steps_s: list[float] = dataclasses.field(default_factory=list)
    round_step_s: list[float] = dataclasses.field(default_factory=list)  # per round: the median step
    totals_s: list[float] = dataclasses.field(default_factory=list)  # per image of the first pass
    attention_s: dict[str, float] = dataclasses.field(default_factory=dict)
    peak_bytes: list[int] = dataclasses.field(default_factory=list)
    memory_kind: str = "unavailable"
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)  # summed call counts per module
    grids: dict[str, tuple[tuple[int, ...], int]] = dataclasses.field(default_factory=dict)
    method: Any = None
    modules: list[str] = dataclasses.field(default_factory=list)


def _render_timed(
    pipe: Any, kw: dict[str, Any], prompt: str, seed: int, run: _Run, modules: dict[str, nn.Module],
    device: torch.device, keep: bool,
) -> float:
    """One timed render into ``run`` (its image kept when ``keep``); returns its median step time."""
    with MemoryMeter(device) as mem, TimedCall(pipe, device, modules) as timed:
        image = render(pipe, kw, prompt, seed)
    for name, sec in timed.attention_s.items():
        run.attention_s[name] = run.attention_s.get(name, 0.0) + sec
    times, total = timed.step_s, timed.wall_s
    run.steps_s += times
    run.round_step_s.append(statistics.median(times) if times else total)
    run.memory_kind = mem.kind
    if mem.peak_bytes is not None:
        run.peak_bytes.append(mem.peak_bytes)
    if keep:
        run.images.append(image)
        run.totals_s.append(total)
    return run.round_step_s[-1]


class _Rounds:
    """The protocol's per-round callables of `compare`: config ``i`` renders the round's prompt with its patch
    installed for that render only (install and removal untimed)."""

    def __init__(self, pipe: Any, kw: dict[str, Any], prompts: Sequence[str], seeds: Sequence[int],
                 configs: Sequence[RunConfig | None], modules: dict[str, nn.Module], device: torch.device,
                 backend: str, bar: Any) -> None:
        self.pipe, self.kw, self.prompts, self.seeds = pipe, kw, prompts, seeds
        self.configs, self.modules, self.device, self.backend, self.bar = configs, modules, device, backend, bar
        self.runs = [_Run(attention_s=dict.fromkeys(modules, 0.0)) for _ in configs]
        self.calls = [0] * len(configs)

    def warm_up(self, i: int) -> None:
        with self._installed(i):
            render(self.pipe, self.kw, self.prompts[0], self.seeds[0])

    @contextlib.contextmanager
    def _installed(self, i: int) -> Iterator[Any]:
        config = self.configs[i]
        if config is None:
            yield None
            return
        handle = apply_config(self.pipe, config, self.backend)
        try:
            yield handle
        finally:
            handle.remove()

    def fn(self, i: int) -> Callable[[], float]:
        def call() -> float:
            run, r = self.runs[i], self.calls[i]
            self.calls[i] += 1
            p = r % len(self.prompts)
            with self._installed(i) as handle:
                recorder = GridRecorder(handle) if handle is not None else None
                try:
                    modules = self.modules if handle is None else {m: self.modules[m] for m in handle.modules}
                    value = _render_timed(self.pipe, self.kw, self.prompts[p], self.seeds[p], run, modules,
                                          self.device, keep=r < len(self.prompts))
                finally:
                    grids = recorder.close() if recorder is not None else {}
                if handle is not None:
                    run.method, run.modules = handle.method, list(handle.modules)
                    add_call_counts(run.stats, handle.stats())
                    for name, g in grids.items():
                        run.grids.setdefault(name, g)
            self.bar.update(1)
            return value

        return call


def _speed(run: _Run) -> dict[str, Any]:
    steps = run.steps_s or [t for t in run.totals_s]
    return {
        "step_min_s": min(steps),
        "step_median_s": statistics.median(steps),
        "steps_timed": len(run.steps_s),
        "step_rounds_s": Spread.of(run.round_step_s).to_dict(),
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

    rounds = max(MIN_ROUNDS, len(prompts))
    order: list[RunConfig | None] = [None, *configs]
    bar = tqdm(total=len(order) * rounds, desc="compare", disable=not progress)
    timed = _Rounds(pipe, kw, prompts, seeds, order, all_modules, dev, backend, bar)
    keys = [REFERENCE, *(f"{i}: {c.label}" for i, c in enumerate(configs, start=1))]
    try:
        # first calls pay one-off costs (allocations, plan caches): one untimed render per config
        warm = {k: (lambda i=i: timed.warm_up(i)) if warmup else (lambda: None) for i, k in enumerate(keys)}
        measured = interleaved_rounds({k: timed.fn(i) for i, k in enumerate(keys)}, rounds, warmup=warm)
    finally:
        bar.close()
    dense = timed.runs[0]
    dense_steps = sum(dense.steps_s or dense.totals_s)
    rows = [_row(REFERENCE, dense, dense, None, {}, prompts, lpips_fn, clip_fn, scorer, extractor, None)]
    rows[0]["images"] = dense.images
    for i, config in enumerate(configs, start=1):
        run = timed.runs[i]
        bounds = end_to_end_bounds(run.method, run.stats, run.grids, dense.attention_s, dense_steps, run.modules)
        counts: dict[str, int] = {f"{k}_calls": sum(getattr(st, k) for st in run.stats.values())
                                  for k in ("sparse", "fallback", "dense")}
        counts["modules"] = len(run.modules)
        speedup = measured.speedup(keys[0], keys[i], bounds["end_to_end_bound"], bounds["attention_bound"])
        rows.append(_row(config.label, run, dense, bounds, counts, prompts, lpips_fn, clip_fn, scorer, extractor,
                         speedup))
        rows[-1]["images"] = run.images
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
            "rounds": rounds,
            "load_average_before": measured.load_before,
            "load_average_after": measured.load_after,
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
    speedup: Speedup | None,
) -> dict[str, Any]:
    speed, ref = _speed(run), _speed(dense)
    row: dict[str, Any] = {"config": label, **speed}
    bounds = bounds or {"end_to_end_bound": 1.0, "attention_bound": 1.0, "flop_bound": 1.0}
    if speedup is None:  # the reference against itself
        speedup = Speedup(Spread.of([1.0] * len(run.round_step_s)), bounds["end_to_end_bound"],
                          bounds["attention_bound"])
    # the protocol's speedup: per-round paired ratios of the per-step medians, median [min-max], in words
    row["speedup"] = speedup.to_dict()
    row["speedup_step_median"] = speedup.value
    row["speedup_step_min"] = ref["step_min_s"] / speed["step_min_s"]
    row["speedup_total"] = ref["total_s"] / speed["total_s"]
    row["labels"] = speedup.labels if label != REFERENCE else ["reference"]
    attn = sum(run.attention_s.values())
    row["attention_share"] = min(1.0, attn / sum(run.steps_s or run.totals_s))
    row.update(counts)
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
    row["accuracy_wilson95"] = None
    if scorer is not None:
        scores = [torch.as_tensor(scorer(b, [p] * len(b))).float().flatten() for b, p in zip(batches, prompts)]
        row["accuracy"] = _mean(scores)
        flat = torch.cat(scores)
        if bool(((flat == 0) | (flat == 1)).all()):  # per-sample correctness: its Wilson 95% interval
            p = wilson(int(flat.sum()), len(flat))
            row["accuracy_wilson95"] = [p.low, p.high]
    if extractor is not None:
        feats = torch.cat([extract_features(extractor, b) for b in batches])
        ref_feats = torch.cat([extract_features(extractor, as_batch(img)) for img in dense.images])
        row["fid_vs_dense"] = fid_from_features(ref_feats, feats)
    return row


def _mean(values: list[Any]) -> float:
    flat = torch.cat([torch.as_tensor(v).float().flatten() for v in values])
    return float(flat.mean())
