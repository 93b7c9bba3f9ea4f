"""End-to-end denoiser-step benchmark: dense vs each method on real-width, reduced-depth denoisers built
from diffusers configs with random weights (no downloads, `bench.workloads`), beside the Amdahl bound.
`scripts/speedup.py --e2e` is the command line (`run_and_write`).

Cases (full scale, ``scale=1``), each at a resolution where attention matters:
  - ``flux-2048``: `FluxTransformer2DModel`, 2 double + 2 single blocks at full width (24 heads x 128),
    2048² image = 128x128 = 16,384 image tokens + 512 text tokens;
  - ``sdxl-2048``: SDXL's `UNet2DConditionModel` (all three levels, 320/640/1280 channels, SDXL's heads and
    cross-attention) with one resnet and one transformer layer per level, 2048² = 256² latent: attention
    grids 128x128 (10 heads x 64) and 64x64 (20 x 64);
  - ``wan-480p``: `WanTransformer3DModel` at Wan 2.1 1.3B width (12 heads x 128, FFN 8960), 2 layers,
    480x832 with 9 latent frames (33 video frames) = 9x30x52 = 14,040 tokens.
``scale`` multiplies the token grid per spatial side (frames, model width and depth stay; FLUX's text
length scales with the image token count), and the methods' spatial windows and strides with it.

Per case: dense, then gna / msw / proxy / agent with their family presets (`diffattn.patch.presets`; window and
stride scaled), each installed with the preset's layers on every step. Timed round-robin
(`timing.time_round_robin`, patch installed untimed before each call), then one probe call per config
with the attention timer (`runner.AttentionTimer`), the grid recorder and the memory meter
(`runner.MemoryMeter`). Bounds come from `bounds.end_to_end_bounds`, as in `compare` (each module's FLOP bound
weighted by its dense attention time, then Amdahl with the measured dense attention share).

Plus `memory_rows`: attention alone on a 256x256 grid (65,536 tokens), dense SDPA vs GNA, with the peak
extra memory of each at two sizes so its growth with N can be read off.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...functional import gna
from ...patch import AttentionHandle, apply_attention
from ...patch.presets import preset_for
from ..bounds import end_to_end_bounds
from ..runner import AttentionTimer, GridRecorder, MemoryMeter, RunConfig, check_device
from ..timing import (
    Speedup,
    TimingSummary,
    labels,
    load_average,
    load_text,
    range_text,
    synchronizer,
    time_round_robin,
)
from .common import log, run_meta, write_result
from .workloads import Workload, build_flux, build_sdxl, build_wan, seeded_randn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
METHODS = ("gna", "msw", "proxy", "agent")
GOAL = 0.9
"""Goal: the achieved end-to-end speedup reaches this fraction of its Amdahl bound."""
SCALED_KNOBS = ("window", "stride")
"""Knobs in tokens along the grid: scaled with the grid (spatial axes only)."""


@dataclasses.dataclass(frozen=True)
class E2ECase:
    """One end-to-end case: ``family`` is the preset key (`diffattn.models.FAMILIES`)."""

    name: str
    family: str
    description: str
    build: Callable[[float, torch.device, torch.dtype], Workload]


CASES = (
    E2ECase("flux-2048", "flux", "FLUX-like: 2 double + 2 single blocks, 24x128, 2048² (16,384 + 512 tokens)",
            build_flux),
    E2ECase("sdxl-2048", "sdxl", "SDXL UNet, all levels, 1 resnet + 1 transformer layer per level, 2048²", build_sdxl),
    E2ECase("wan-480p", "wan", "Wan 2.1-1.3B width, 2 layers, 480x832, 33 frames (9x30x52 tokens)", build_wan),
)


def _scale_value(value: Any, scale: float) -> Any:
    """A window/stride knob scaled on its spatial (last two) axes; an int applies to every axis."""
    if isinstance(value, tuple):
        head, tail = value[:-2], value[-2:]
        return (*head, *(max(1, round(v * scale)) for v in tail))
    return max(1, round(value * scale))


def method_configs(family: str, scale: float = 1.0, methods: Sequence[str] = METHODS) -> list[RunConfig]:
    """Each method with its ``family`` preset (knobs and layers), window/stride scaled by ``scale``."""
    configs = []
    for method in methods:
        preset = preset_for(method, family)
        knobs = dict(preset.knobs) if preset is not None else {}
        knobs = {k: _scale_value(v, scale) if k in SCALED_KNOBS else v for k, v in knobs.items()}
        configs.append(RunConfig(method, tuple(knobs.items()), preset.layers if preset is not None else None))
    return configs


def install(model: nn.Module, config: RunConfig, backend: str) -> AttentionHandle:
    """``config`` on ``model`` on every step (a bare denoiser has no scheduler for the preset's steps)."""
    try:
        return apply_attention(
            model, config.method, layers=config.layers, backend=backend, preset=False, **dict(config.knobs)
        )
    except (ValueError, TypeError) as e:
        raise type(e)(f"config {config.label!r}: {e}") from e


class _Switch:
    """Which config is installed on the model: `to` removes the current one and installs the next."""

    def __init__(self, model: nn.Module, backend: str) -> None:
        self.model, self.backend = model, backend
        self.handle: AttentionHandle | None = None

    def to(self, config: RunConfig | None) -> AttentionHandle | None:
        self.off()
        if config is not None:
            self.handle = install(self.model, config, self.backend)
        return self.handle

    def off(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


@dataclasses.dataclass
class _Probe:
    step_s: float
    attention_s: dict[str, float]
    grids: dict[str, tuple[tuple[int, ...], int]]
    peak_bytes: int | None
    memory_kind: str


def _probe(forward: Callable[[], object], modules: dict[str, nn.Module], handle: AttentionHandle | None,
           device: torch.device) -> _Probe:
    """One step with the attention timer, grid recorder and memory meter around it."""
    sync = synchronizer(device)
    recorder = GridRecorder(handle) if handle is not None else None
    timer = AttentionTimer(modules, sync)
    try:
        with MemoryMeter(device) as mem:
            t0 = time.perf_counter()
            forward()
            sync()
            step = time.perf_counter() - t0
    finally:
        attention = timer.close()
        grids = recorder.close() if recorder is not None else {}
    return _Probe(step, attention, grids, mem.peak_bytes, mem.kind)


def _why(row: dict[str, Any], dense: dict[str, Any]) -> str:
    """Where the end-to-end speedup falls short of its Amdahl bound, from the probe's split of the step."""
    b = row["bounds"]
    parts = []
    achieved, bound = row["attention_speedup"], b["attention_bound"]
    if achieved < 1:
        parts.append(f"the method's attention is slower than dense SDPA here ({achieved:.2f}x): at this size "
                     "its per-call costs (gathers, plans, shifts, pooling) outweigh the FLOPs it saves")
    elif achieved < GOAL * bound:
        token_tile = f"token/tile bounds {_f(b.get('token_bound'))}/{_f(b.get('tile_bound'))}"
        parts.append(f"the attention part reached {achieved:.2f}x of its {bound:.2f}x FLOP bound "
                     f"({achieved / bound:.2f}; {token_tile})")
    outside_dense = dense["probe_step_s"] - dense["probe_attention_s"]
    outside = row["probe_step_s"] - row["probe_attention_s_all"]
    if outside > outside_dense * 1.05:
        grew = outside / outside_dense
        parts.append(f"time outside attention grew {grew:.2f}x ({outside_dense:.3g} -> {outside:.3g} s)")
    if row["fallback_calls"]:
        parts.append(f"{row['fallback_calls']} calls fell back to dense")
    probe = dense["probe_step_s"] / row["probe_step_s"]
    if abs(probe / row["speedup_median"] - 1) > 0.15:
        parts.append(f"the probe step gave {probe:.2f}x against the timed median's {row['speedup_median']:.2f}x: "
                     "step-time noise is as large as the effect")
    return "; ".join(parts) or "timing noise (the probe's split of the step shows no loss)"


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


@torch.no_grad()
def run_case(
    case: E2ECase, device: str = "cpu", dtype: str = "bf16", scale: float = 1.0, repeats: int = 3,
    backend: str = "auto", methods: Sequence[str] = METHODS,
) -> dict[str, Any]:
    """Dense and each method config on ``case``; the case's JSON record (``rows``: dense first)."""
    dev = check_device(device)
    t_build = time.perf_counter()
    w = case.build(scale, dev, DTYPES[dtype])
    build_s = time.perf_counter() - t_build
    weights = sum(p.numel() * p.element_size() for p in w.model.parameters())
    log(f"[e2e] {case.name}: {w.shape}, {weights / 2**30:.2f} GiB weights, built in {build_s:.0f} s")
    configs = method_configs(case.family, scale, methods)
    switch = _Switch(w.model, backend)
    modules: dict[str, nn.Module] = {}
    try:
        for c in configs:  # trial installs: a bad config fails before any timing
            modules.update({m: w.model.get_submodule(m) for m in switch.to(c).modules})
        switch.off()

        def forward() -> object:
            return w.model(**w.inputs)

        keys = {"dense": None, **{c.label: c for c in configs}}
        prepare = {k: (lambda c=c: switch.to(c)) for k, c in keys.items()}
        times = time_round_robin(dict.fromkeys(keys, forward), repeats, sync=synchronizer(dev), log=log,
                                 label=case.name, prepare=prepare)
        probes: dict[str, _Probe] = {}
        rows: list[dict[str, Any]] = []
        for key, config in keys.items():
            handle = switch.to(config)
            probes[key] = p = _probe(forward, modules, handle, dev)
            t = TimingSummary.of(times[key])
            row: dict[str, Any] = {
                "config": key if config is None else config.label,
                "method": "dense" if config is None else config.method,
                "knobs": {} if config is None else {k: list(v) if isinstance(v, tuple) else v for k, v in config.knobs},
                "layers": None if config is None else config.layers,
                "backend": None if handle is None else handle.backend.name,
                "step_min_s": t.min_s,
                "step_median_s": t.median_s,
                "step_times_s": list(t.times_s),
                "probe_step_s": p.step_s,
                "peak_memory_bytes": p.peak_bytes,
                "peak_memory_kind": p.memory_kind,
            }
            if handle is None:
                row["probe_attention_s"] = sum(p.attention_s.values())
                row["attention_share"] = min(1.0, row["probe_attention_s"] / p.step_s)
            else:
                names = list(handle.modules)
                dense_p = probes["dense"]
                bounds = end_to_end_bounds(handle.method, handle.stats(), p.grids, dense_p.attention_s,
                                           dense_p.step_s, names)
                stats = handle.stats()
                calls = {f"{k}_calls": sum(getattr(s, k) for s in stats.values()) for k in ("sparse", "fallback")}
                attn = sum(p.attention_s[m] for m in names)
                dense_attn = sum(dense_p.attention_s[m] for m in names)
                speedup_med = rows[0]["step_median_s"] / t.median_s
                row.update(
                    modules=len(names),
                    **calls,
                    speedup_min=rows[0]["step_min_s"] / t.min_s,
                    speedup_median=speedup_med,
                    probe_attention_s=attn,
                    probe_attention_s_all=sum(p.attention_s.values()),
                    attention_share=min(1.0, attn / p.step_s),
                    dense_attention_share=bounds["dense_attention_share"],
                    attention_speedup=dense_attn / attn if attn > 0 else math.inf,
                    bounds=bounds,
                    amdahl_bound=bounds["end_to_end_bound"],
                    fraction_of_amdahl=speedup_med / bounds["end_to_end_bound"],
                    fraction_of_amdahl_min=rows[0]["step_min_s"] / t.min_s / bounds["end_to_end_bound"],
                )
                # the timing protocol's words: the spread of the per-round paired ratios, judged against the bound
                paired = Speedup.paired(rows[0]["step_times_s"], list(t.times_s), bounds["end_to_end_bound"],
                                        bounds["attention_bound"])
                row["speedup_spread"] = [paired.spread.low, paired.spread.high]
                row["labels"] = labels(speedup_med, paired.spread, bounds["end_to_end_bound"])
                row["meets_goal"] = row["fraction_of_amdahl"] >= GOAL
                row["why"] = "" if row["meets_goal"] else _why(row, rows[0])
            rows.append(row)
            log(f"[e2e] {case.name} {row['config']}: median {t.median_s:.3f} s"
                + (f", speedup {row['speedup_median']:.2f}x, Amdahl {row['amdahl_bound']:.2f}x, "
                   f"fraction {row['fraction_of_amdahl']:.2f}" if handle is not None else
                   f", attention share {row['attention_share']:.2f}"))
    finally:
        switch.off()
    return {
        "case": case.name,
        "family": case.family,
        "load_average": load_average(),
        "description": case.description,
        "shape": w.shape,
        "grid": list(w.grid),
        "text_tokens": w.text_tokens,
        "parameters": sum(p.numel() for p in w.model.parameters()),
        "weights_bytes": weights,
        "build_s": build_s,
        "rows": rows,
    }


def _peak(device: torch.device, fn: Callable[[], object]) -> tuple[int | None, str, float]:
    sync = synchronizer(device)
    with MemoryMeter(device) as mem:
        t0 = time.perf_counter()
        fn()
        sync()
        seconds = time.perf_counter() - t0
    return mem.peak_bytes, mem.kind, seconds


def _memory_row(
    dev: torch.device, dtype: str, side: int, heads: int, head_dim: int, window: int, stride: int, backend: str
) -> dict[str, Any]:
    n = side * side
    q, k, v = (seeded_randn(1, n, heads, head_dim, device=dev, dtype=DTYPES[dtype], seed=s) for s in range(3))
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, S, D] for SDPA
    g_peak, kind, g_s = _peak(dev, lambda: gna(q, k, v, (side, side), window, stride, backend=backend))
    d_peak, _, d_s = _peak(dev, lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt))
    log(f"[e2e] memory {side}x{side}: dense {_mib(d_peak)}, gna {_mib(g_peak)} ({kind})")
    return {
        "grid": [side, side],
        "tokens": n,
        "heads": heads,
        "head_dim": head_dim,
        "dtype": dtype,
        "window": [window, window],
        "stride": [stride, stride],
        "qkv_bytes": 3 * q.numel() * q.element_size(),
        "dense_peak_bytes": d_peak,
        "gna_peak_bytes": g_peak,
        "peak_memory_kind": kind,
        "dense_s": d_s,
        "gna_s": g_s,
        "scores_n2_fp32_bytes": heads * n * n * 4,
        "scores_window_fp32_bytes": heads * n * window * window * 4,
    }


@torch.no_grad()
def memory_rows(
    device: str = "cpu", dtype: str = "bf16", sides: Sequence[int] = (128, 256), heads: int = 8, head_dim: int = 64,
    window: int = 32, stride: int = 16, backend: str = "auto",
) -> list[dict[str, Any]]:
    """Attention alone on ``side x side`` grids: peak extra memory (and one call's time) of dense SDPA and of
    GNA ``window``/``stride`` (first call each, so nothing is cached), beside the O(N²) score matrix and the
    O(N·window) window scores."""
    dev = check_device(device)
    return [_memory_row(dev, dtype, side, heads, head_dim, window, stride, backend) for side in sides]


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.1f} MiB"


def run_e2e(
    device: str = "cpu", dtype: str = "bf16", scale: float = 1.0, repeats: int = 3, cases: str = "",
    backend: str = "auto", memory_sides: Sequence[int] = (128, 256),
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every case whose name contains ``cases`` (``"memory"`` selects the attention-only rows); the JSON
    payload without ``meta``. ValueError on a bad scale / dtype / device or when nothing matches.
    ``progress`` gets the payload so far after each case (e.g. to write partial results)."""
    if not 0 < scale <= 1:
        raise ValueError(f"--scale {scale} must be in (0, 1]")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} must be one of {sorted(DTYPES)}")
    check_device(device)
    chosen = [c for c in CASES if cases in c.name]
    memory = cases in "memory"
    if not chosen and not memory:
        raise ValueError(f"no case matches {cases!r}; cases: {[c.name for c in CASES] + ['memory']}")
    payload: dict[str, Any] = {"cases": [], "memory_rows": [], "goal": GOAL, "complete": False}
    for case in chosen:
        payload["cases"].append(run_case(case, device, dtype, scale, repeats, backend))
        if progress is not None:
            progress(payload)
    if memory:
        payload["memory_rows"] = memory_rows(device, dtype, memory_sides, backend=backend)
    payload["complete"] = True
    return payload


def report_markdown(payload: dict[str, Any]) -> str:
    """The Markdown report of a `run_e2e` payload with its ``meta``."""
    meta = payload["meta"]
    scale = meta["scale"]
    lines = ["# diffattn end-to-end denoiser step: dense vs methods, beside the Amdahl bound", ""]
    where = f"{meta['device']} ({meta['device_name']}), {meta['dtype']}, torch {meta['torch']}"
    where += f", {meta['threads']} threads"
    lines.append(f"{meta['date']}, {where}, {meta['repeats']} timed repeats round-robin after 1 warm-up, "
                 f"runtime {meta['runtime_s']:.0f} s. Command: `{meta['command']}`.")
    lines.append("")
    if not payload["complete"]:
        lines += ["**Partial results**: the run was still going (or was stopped) after the cases below.", ""]
    if scale < 1:
        lines.append(f"**Reduced scale: `--scale {scale}`** — every token grid is {scale} x the full size per spatial "
                     "side (frames, model width and depth unchanged; FLUX text scaled with the image tokens), and "
                     "GNA/proxy windows and strides with it. These are NOT the full-scale figures: attention's share "
                     "of the step, and so every bound, is smaller than at full scale.")
        lines.append("")
    lines.append("Speedup = dense step / method step (median; min in the JSON). Attention share: wall time inside the "
                 "patched attention modules minus their projections (module hooks, one probe step). Amdahl bound: each "
                 "module's FLOP bound weighted by its dense attention time, then Amdahl with the dense share. "
                 f"Goal: speedup >= {GOAL} x the Amdahl bound. Peak memory: {_memory_kind(payload)}.")
    for case in payload["cases"]:
        dense = case["rows"][0]
        lines += ["", f"## {case['case']}: {case['description']}", "",
                  f"At this scale: {case['shape']}; {case['parameters'] / 1e6:.0f} M parameters "
                  f"({case['weights_bytes'] / 2**30:.2f} GiB). Dense step {dense['step_median_s']:.3f} s (median), "
                  f"attention share {dense['attention_share']:.2f}, "
                  f"peak memory {_mib(dense['peak_memory_bytes'])} over the weights. "
                  f"{load_text(case.get('load_average'), case.get('load_average')).capitalize()} after the case.", ""]
        head = ("| config | backend | layers | step min / med (s) | speedup min / med [paired min-max] | in words "
                "| dense attn share | attn speedup / FLOP bound | Amdahl bound | fraction of Amdahl "
                "| peak mem over weights | sparse/fallback calls |")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in case["rows"][1:]:
            b = r["bounds"]
            lines.append(
                f"| {r['config']} | {r['backend']} | {r['layers'] or 'all'} "
                f"| {r['step_min_s']:.3f} / {r['step_median_s']:.3f} "
                f"| {r['speedup_min']:.2f} / {r['speedup_median']:.2f} {range_text(r.get('speedup_spread'))} "
                f"| {'; '.join(r.get('labels', []))} "
                f"| {r['dense_attention_share']:.2f} | {r['attention_speedup']:.2f} / {b['attention_bound']:.2f} "
                f"| {r['amdahl_bound']:.2f} | **{r['fraction_of_amdahl']:.2f}** | {_mib(r['peak_memory_bytes'])} "
                f"| {r['sparse_calls']}/{r['fallback_calls']} |"
            )
        misses = [r for r in case["rows"][1:] if not r["meets_goal"]]
        for r in case["rows"][1:]:
            status = "PASS" if r["meets_goal"] else "MISS"
            lines.append("")
            lines.append(f"- {status} {r['config']}: {r['fraction_of_amdahl']:.2f} of the Amdahl bound"
                         + (f" — {r['why']}" if r in misses else ""))
    if payload["memory_rows"]:
        lines += ["", "## Attention alone: peak extra memory, dense SDPA vs GNA", "",
                  "| grid | tokens | heads x dim | GNA window / stride | dense SDPA peak | GNA peak | dense s | GNA s "
                  "| N² fp32 scores | N·window fp32 scores |", "|" + "---|" * 10]
        for r in payload["memory_rows"]:
            lines.append(
                f"| {r['grid'][0]}x{r['grid'][1]} | {r['tokens']:,} | {r['heads']}x{r['head_dim']} "
                f"| {r['window'][0]}² / {r['stride'][0]}² "
                f"| {_mib(r['dense_peak_bytes'])} | {_mib(r['gna_peak_bytes'])} "
                f"| {r['dense_s']:.2f} | {r['gna_s']:.2f} | {_mib(r['scores_n2_fp32_bytes'])} "
                f"| {_mib(r['scores_window_fp32_bytes'])} |"
            )
        if max(r["tokens"] for r in payload["memory_rows"]) < 65536:
            lines += ["", "The 65,536-token row (256x256, `--memory-sides 128,256`, the default) is not in this run; "
                      "`scripts/gpu_check.sh` runs it on a GPU."]
        lines += ["", memory_growth(payload["memory_rows"]),
                  "", "Dense SDPA is PyTorch's fused kernel (flash / memory-efficient), so it holds no N² matrix "
                  "either: its extra memory is O(N). The N² column is what an unfused attention holds. GNA's "
                  "extra memory is O(N·window) (per-tile key/value gathers and scores), never an N² matrix."]
    return "\n".join(lines) + "\n"


def memory_growth(rows: Sequence[dict[str, Any]]) -> str:
    """One sentence: how each peak grows between the smallest and the largest grid, beside N and N²."""
    if len(rows) < 2:
        return ""
    a, b = rows[0], rows[-1]
    n = b["tokens"] / a["tokens"]
    parts = []
    for key, name in (("gna_peak_bytes", "GNA"), ("dense_peak_bytes", "dense SDPA")):
        if a[key] and b[key]:
            parts.append(f"{name} {b[key] / a[key]:.1f}x")
    text = f"From {a['tokens']:,} to {b['tokens']:,} tokens (N x{n:.0f}, N² x{n * n:.0f}) the peak grows: "
    text += ", ".join(parts) + "."
    if a["gna_peak_bytes"] and b["gna_peak_bytes"]:
        growth = b["gna_peak_bytes"] / a["gna_peak_bytes"]
        like = "like N or slower (O(N·window) at a fixed window)" if growth <= 1.25 * n else "faster than N"
        text += f" GNA's peak grows {like}; an unfused dense attention's score matrix would grow {n * n:.0f}x."
    return text


def _memory_kind(payload: dict[str, Any]) -> str:
    kinds = {r["peak_memory_kind"] for c in payload["cases"] for r in c["rows"]}
    kinds |= {r["peak_memory_kind"] for r in payload["memory_rows"]}
    return "; ".join(sorted(kinds)) or "-"


def run_and_write(
    out: Path,
    device: str = "cpu",
    dtype: str = "bf16",
    scale: float = 1.0,
    repeats: int | None = None,
    cases: str = "",
    memory_sides: str = "128,256",
    argv: list[str] | None = None,
) -> int:
    """`scripts/speedup.py --e2e`: `run_e2e` (``repeats`` default 3; ``memory_sides`` comma-separated), writing
    ``out/e2e.json`` and ``out/e2e.md`` after every case (a timeout keeps what finished) and printing the final
    Markdown. Exit status 2, with the error on stderr, on bad input."""
    repeats = repeats or 3
    start = time.perf_counter()

    def save(payload: dict, final: bool = False) -> None:  # after every case: a timeout keeps what finished
        cuda = torch.device(device).type == "cuda"
        name = torch.cuda.get_device_name(torch.device(device)) if cuda else platform.processor() or "cpu"
        payload["meta"] = run_meta(
            argv, start, device=device, device_name=name, dtype=dtype, scale=scale,
            repeats=repeats, triton_quick_tune=os.environ.get("DIFFATTN_TRITON_QUICK_TUNE", "0") == "1",
        )  # fmt: skip
        write_result(out, "e2e", payload, report_markdown(payload), echo=final)

    try:
        sides = tuple(int(s) for s in memory_sides.split(",") if s)
        payload = run_e2e(device, dtype, scale, repeats, cases, memory_sides=sides, progress=save)
    except ValueError as e:
        log(f"speedup.py --e2e: {e}")
        return 2
    save(payload, final=True)
    return 0
