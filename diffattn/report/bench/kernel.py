"""Attention-kernel benchmark: diffattn's methods side by side with dense SDPA (and NATTEN's CPU
path), each row beside its bounds. `scripts/speedup.py` is the command line (`run_and_write`).

Every case runs round-robin with dense SDPA in one process (`diffattn.report.timing`), after one
warm-up call of each, with the same dtype and thread count. Rows report min and median seconds, the
speedup (dense / sparse) and how close it gets to its bounds (`diffattn.report.bounds`):

  - GNA rows: the token bound ``N / prod(window)`` and the tile bound ``1 / density`` of the CPU plan
    that is timed, i.e. the work the kernel actually does (partial tiles count as full), and the path the
    CPU engine took for it (``tiled(4x8)``, ``masked-sdpa``);
  - msw, proxy and agent rows: each method's FLOP bound (``method_bounds(method, grid).flop_bound``).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...functional import gna
from ...kernels import batch_item_bytes, cpu, get_backend
from ...methods import AttendCall, get_method
from ...methods.gna import GNA, GNAConfig
from ..bounds import gna_bounds, method_bounds
from ..targets import KERNEL_TARGETS, METHOD_TARGETS, check_targets, target_lines
from ..timing import TimingSummary, speedup_fields, time_round_robin
from .common import log, run_meta, write_result

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
HEADS, HEAD_DIM, BATCH = 8, 64, 1
NATTEN_BUDGET_BYTES = 8 * 2**30


@dataclass(frozen=True)
class Case:
    """One benchmark row. ``role`` ties the row to the issue's targets."""

    name: str
    grid: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    role: str  # "sliding" (stride 1), "tile_aligned", "blocked" (stride == window, also tile-aligned)
    natten: bool = False


def _fmt(t: tuple[int, ...]) -> str:
    return "x".join(map(str, t))


def _case(
    grid: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...], dtype: str, natten: bool = False
) -> Case:
    role = "sliding" if set(stride) == {1} else "blocked" if stride == window else "tile_aligned"
    prefix = ("natten-" if natten else "") + f"{len(grid)}d"
    name = f"{prefix}-{_fmt(grid)}-w{_fmt(window)}-s{_fmt(stride)}-{dtype}"
    return Case(name, grid, window, stride, dtype, role, natten)


def build_cases(quick: bool) -> list[Case]:
    """The issue's cases; ``quick`` shrinks every grid/window/stride by 4 (2 on the 3-D frame axis)."""
    g2, w2 = ((32, 32), 8) if quick else ((128, 128), 32)
    g3, w3 = ((4, 8, 8), (2, 4, 4)) if quick else ((16, 32, 32), (8, 16, 16))
    cases = []
    for dtype in DTYPES:
        for s in (1, w2 // 4, w2 // 2, w2):
            cases.append(_case(g2, (w2, w2), (s, s), dtype))
    for dtype in DTYPES:
        for s3 in ((1, 1, 1), w3):
            cases.append(_case(g3, w3, s3, dtype))
    cases.append(_case(g2, (w2, w2), (1, 1), "fp32", natten=True))
    return cases


def make_qkv(grid: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random ``[B, S, H, D]`` q, k, v (drawn in fp32, then cast)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (BATCH, math.prod(grid), HEADS, HEAD_DIM)
    return tuple(torch.randn(shape, generator=gen).to(dtype) for _ in range(3))  # type: ignore[return-value]


def dense_fn(q: Tensor, k: Tensor, v: Tensor) -> Callable[[], object]:
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    return lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)


def ours_fn(q: Tensor, k: Tensor, v: Tensor, case: Case) -> Callable[[], object]:
    return lambda: gna(q, k, v, case.grid, case.window, case.stride, backend="cpu")


def natten_heads_per_call(num_tokens: int, requested: int) -> int:
    """Heads per NATTEN call: ``requested`` if > 0, else as many as fit ``NATTEN_BUDGET_BYTES``.

    NATTEN's CPU backend (eager flex attention) materializes the full score matrix: measured peak
    ~7 x N^2 x 4 bytes per head (7 GB for one head at N = 16384; all 8 heads were OOM-killed at
    24 GB). Heads are independent, so splitting them across calls gives the same result.
    """
    if requested > 0:
        return min(requested, HEADS)
    per_head = 7 * num_tokens**2 * 4
    return max(1, min(HEADS, NATTEN_BUDGET_BYTES // per_head))


def natten_fn(q: Tensor, k: Tensor, v: Tensor, case: Case, heads_per_call: int) -> Callable[[], object]:
    """NATTEN ``na2d`` on its default CPU backend, ``heads_per_call`` heads per call."""
    import natten

    b, x, y = BATCH, *case.grid
    q5, k5, v5 = (t.view(b, x, y, HEADS, HEAD_DIM) for t in (q, k, v))
    sl = [slice(h, h + heads_per_call) for h in range(0, HEADS, heads_per_call)]
    chunks = [tuple(t[..., s, :].contiguous() for t in (q5, k5, v5)) for s in sl]
    out = q.new_empty(b, x, y, HEADS, HEAD_DIM)

    def run() -> Tensor:
        for i, (qc, kc, vc) in enumerate(chunks):
            h = i * heads_per_call
            out[..., h : h + heads_per_call, :] = natten.na2d(qc, kc, vc, kernel_size=case.window, stride=case.stride)
        return out

    return run


def _cpu_path(case: Case) -> str:
    """The CPU engine's path for the case's plan (what ``gna(..., backend="cpu")`` runs)."""
    q = torch.empty(BATCH, math.prod(case.grid), HEADS, HEAD_DIM, dtype=DTYPES[case.dtype], device="meta")
    method = GNA(GNAConfig(window=case.window, stride=case.stride))
    plan = method.plan(case.grid, get_backend("cpu"), batch_item_bytes(q))
    return cpu.prepare_call(plan, q).label


def timing_fields(dense: list[float], sparse: list[float], repeats: int, bound: float) -> dict:
    """The row fields every benchmark row shares: shape, timings (min/median), speedups and their words
    against ``bound`` (`timing.labels`)."""
    return {
        "batch": BATCH,
        "heads": HEADS,
        "head_dim": HEAD_DIM,
        "repeats": repeats,
        **speedup_fields(dense, sparse, bound),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run_case(case: Case, repeats: int, natten_repeats: int, natten_heads: int) -> dict:
    """Time one case against dense SDPA; return its row."""
    q, k, v = make_qkv(case.grid, DTYPES[case.dtype])
    b = gna_bounds(case.grid, case.window, case.stride, item_bytes=batch_item_bytes(q))
    token_bound, tile_bound, masked = b.token_bound, b.plan_bound, b.plan_has_mask
    fns = {"dense": dense_fn(q, k, v)}
    if case.natten:
        natten_heads = natten_heads_per_call(math.prod(case.grid), natten_heads)
        fns["natten"] = natten_fn(q, k, v, case, natten_heads)
        repeats = natten_repeats
    fns["ours"] = ours_fn(q, k, v, case)
    times = time_round_robin(fns, repeats, log=log, label=case.name)
    # NATTEN computes exactly the neighbourhoods (the token bound); ours, its plan's tiles
    bound = token_bound if case.natten else tile_bound
    timing = timing_fields(times["dense"], times["natten" if case.natten else "ours"], repeats, bound)
    speedup = timing["speedup_min"]
    row = {
        "case": case.name,
        "kind": "natten" if case.natten else "gna",
        "role": case.role,
        "grid": list(case.grid),
        "window": list(case.window),
        "stride": list(case.stride),
        "dtype": case.dtype,
        **timing,
        "token_bound": token_bound,
        "tile_bound": tile_bound,
        "achieved_over_tile_bound": speedup / tile_bound,
        "achieved_over_token_bound": speedup / token_bound,
        "plan_has_masked_tiles": masked,
        "path": _cpu_path(case),
        "note": "",
    }
    if case.natten:
        import natten

        ours = TimingSummary.of(times["ours"])
        o_min, o_med = ours.min_s, ours.median_s
        s_min, s_med = timing["sparse_min_s"], timing["sparse_median_s"]  # NATTEN's
        row.update(
            natten_version=natten.__version__,
            natten_heads_per_call=natten_heads,
            ours_min_s=o_min,
            ours_median_s=o_med,
            ours_times_s=times["ours"],
            natten_over_ours_min=s_min / o_min,
            natten_over_ours_median=s_med / o_med,
            note=(
                f"sparse = NATTEN {natten.__version__} na2d (CPU flex-fna, eager), {natten_heads} of {HEADS} "
                f"heads per call, 1 warm-up + {repeats} timed repeats (round-robin with dense and ours); "
                f"ours min {o_min:.3f} s -> NATTEN/ours {s_min / o_min:.1f}x (min), "
                f"{s_med / o_med:.1f}x (median)"
            ),
        )
    return row


def markdown(rows: list[dict], meta: dict, targets: list[dict]) -> str:
    head = (
        "| case | dtype | window | stride | dense min / med (s) | sparse min / med (s) | speedup min / med "
        "| token bound | tile bound | achieved / tile | achieved / token | words | path | threads | torch | note |"
    )
    lines = [
        "# diffattn GNA CPU speedup vs dense SDPA",
        "",
        f"{meta['date']}, machine `{meta['machine']}`, nproc {meta['nproc']}, torch {meta['torch']}, "
        f"{meta['threads']} threads, runtime {meta['runtime_s']:.0f} s{' (quick)' if meta['quick'] else ''}"
        + (", load average at the end {:.2f} {:.2f} {:.2f}".format(*meta["load_average"]) if "load_average" in meta
           else "")
        + ". Round-robin dense/sparse in one process, 1 warm-up each; speedup = dense / sparse.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['dtype']} | {_fmt(tuple(r['window']))} | {_fmt(tuple(r['stride']))} "
            f"| {r['dense_min_s']:.3f} / {r['dense_median_s']:.3f} "
            f"| {r['sparse_min_s']:.3f} / {r['sparse_median_s']:.3f} "
            f"| {r['speedup_min']:.2f} / {r['speedup_median']:.2f} "
            f"| {r['token_bound']:.2f} | {r['tile_bound']:.2f} "
            f"| {r['achieved_over_tile_bound']:.2f} | {r['achieved_over_token_bound']:.2f} "
            f"| {'; '.join(r.get('labels', []))} | {r.get('path', '')} "
            f"| {r['threads']} "
            f"| {r['torch']} | {r['note']} |"
        )
    lines += ["", "## Targets", ""] + [f"- {line}" for line in target_lines(targets)]
    return "\n".join(lines) + "\n"


# --- msw, proxy and agent rows (issue 4): each method side by side with dense SDPA, against its FLOP bound ---
#   msw: N / window tokens (2x2 windows: 4x); the timed call draws a half-window shift;
#   proxy: N / (window tokens + number of windows): each query scores its window and one proxy per window;
#   agent: N / (2 n_agents): agents x keys, then queries x agents.


@dataclass(frozen=True)
class MethodCase:
    """One msw/proxy/agent benchmark row: ``knobs`` are the method's config for this row."""

    name: str
    method: str
    grid: tuple[int, ...]
    knobs: tuple[tuple[str, object], ...]
    dtype: str


def build_method_cases(quick: bool) -> list[MethodCase]:
    """N = 16384 (128x128), or 32x32 with ``quick``: msw with its default 2x2 windows, proxy with 32x32
    windows (8x8 quick), agent at 1/16."""
    grid, window = ((32, 32), 8) if quick else ((128, 128), 32)
    cases = []
    for dtype in DTYPES:
        cases.append(MethodCase(f"msw-{_fmt(grid)}-2x2windows-{dtype}", "msw", grid, (), dtype))
        name = f"proxy-{_fmt(grid)}-w{window}x{window}-{dtype}"
        cases.append(MethodCase(name, "proxy", grid, (("window", window),), dtype))
        cases.append(MethodCase(f"agent-{_fmt(grid)}-r1_16-{dtype}", "agent", grid, (("ratio", 1 / 16),), dtype))
    return cases


def _half_shift_timestep(method: object) -> float:
    """A timestep whose seeded msw draw (layer "bench") is a half-window shift, so the timed call
    really permutes tokens; 0 for methods that do not shift."""
    quarter = getattr(method.config, "shift_quarter", None)  # type: ignore[attr-defined]
    if quarter is None:
        return 0.0
    return next(float(t) for t in range(1000) if quarter("bench", float(t)) == 2)


def run_method_case(case: MethodCase, repeats: int) -> dict:
    """Time one msw/proxy/agent case against dense SDPA; return its row."""
    cls = get_method(case.method)
    method = cls(cls.make_config(**dict(case.knobs)))
    q, k, v = make_qkv(case.grid, DTYPES[case.dtype])
    call = AttendCall(grid=case.grid, backend="cpu", layer="bench", timestep=_half_shift_timestep(method))
    bound = method_bounds(method, case.grid)
    fns = {"dense": dense_fn(q, k, v), "ours": lambda: method.attend(q, k, v, call)}
    times = time_round_robin(fns, repeats, log=log, label=case.name)
    timing = timing_fields(times["dense"], times["ours"], repeats, bound.flop_bound)
    return {
        "case": case.name,
        "kind": case.method,
        "knobs": dict(case.knobs),
        "grid": list(case.grid),
        "dtype": case.dtype,
        **timing,
        "flop_bound": bound.flop_bound,
        "bound_formula": bound.flop_formula,
        "achieved_over_bound": timing["speedup_min"] / bound.flop_bound,
    }


def method_markdown(rows: list[dict], targets: list[dict]) -> str:
    head = (
        "| case | dtype | knobs | dense min / med (s) | sparse min / med (s) | speedup min / med "
        "| FLOP bound | achieved / bound | words |"
    )
    lines = ["", "## msw, proxy and agent vs dense SDPA", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["knobs"].items())
        lines.append(
            f"| {r['case']} | {r['dtype']} | {knobs} | {r['dense_min_s']:.3f} / {r['dense_median_s']:.3f} "
            f"| {r['sparse_min_s']:.3f} / {r['sparse_median_s']:.3f} "
            f"| {r['speedup_min']:.2f} / {r['speedup_median']:.2f} "
            f"| {r['flop_bound']:.2f} ({r['bound_formula']}) | {r['achieved_over_bound']:.2f} "
            f"| {'; '.join(r.get('labels', []))} |"
        )
    lines += [""] + [f"- {line}" for line in target_lines(targets)]
    return "\n".join(lines) + "\n"


def run_benchmark(
    quick: bool,
    repeats: int,
    cases: str = "",
    natten: bool = True,
    natten_repeats: int = 2,
    natten_heads_per_call: int = 0,
) -> dict:
    """Run every case whose name contains ``cases``; the JSON payload (rows, targets, method rows and
    method targets; the caller adds ``meta``). A ValueError if no case matches."""
    gna_cases = [c for c in build_cases(quick) if cases in c.name and not (c.natten and not natten)]
    method_cases = [c for c in build_method_cases(quick) if cases in c.name]
    if not gna_cases and not method_cases:
        raise ValueError(f"no case matches {cases!r}")
    rows = []
    for i, case in enumerate(gna_cases, 1):
        log(f"[{i}/{len(gna_cases)}] {case.name} ({torch.get_num_threads()} threads)")
        rows.append(run_case(case, repeats, min(natten_repeats, repeats), natten_heads_per_call))
    method_rows = []
    for i, mcase in enumerate(method_cases, 1):
        log(f"[method {i}/{len(method_cases)}] {mcase.name} ({torch.get_num_threads()} threads)")
        method_rows.append(run_method_case(mcase, repeats))
    return {
        "rows": rows,
        "targets": check_targets(KERNEL_TARGETS, rows),
        "method_rows": method_rows,
        "method_targets": check_targets(METHOD_TARGETS, method_rows),
    }


def report_markdown(payload: dict) -> str:
    """The Markdown report of a `run_benchmark` payload with its ``meta``."""
    md = markdown(payload["rows"], payload["meta"], payload["targets"])
    if payload["method_rows"]:
        md += method_markdown(payload["method_rows"], payload["method_targets"])
    return md


def run_and_write(
    out: Path,
    quick: bool = False,
    repeats: int | None = None,
    cases: str = "",
    natten: bool = True,
    natten_repeats: int = 2,
    natten_heads_per_call: int = 0,
    argv: list[str] | None = None,
) -> int:
    """`scripts/speedup.py`: `run_benchmark` (``repeats`` default 5, 2 with ``quick``), then ``out/speedup.json``
    and ``out/speedup.md`` (printed). Exit status 2, with the error on stderr, when no case matches."""
    repeats = 2 if quick else repeats or 5
    warnings.filterwarnings("ignore", module=r"torch\.nn\.attention\.flex_attention")
    start = time.perf_counter()
    try:
        payload = run_benchmark(quick, repeats, cases, natten, natten_repeats, natten_heads_per_call)
    except ValueError as e:
        log(f"speedup.py: {e} (--cases)")
        return 2
    payload["meta"] = run_meta(argv, start, quick=quick, repeats=repeats, load_average=list(os.getloadavg()))
    write_result(out, "speedup", payload, report_markdown(payload))
    return 0
