"""CPU speedup of diffattn GNA over dense SDPA (and NATTEN's CPU path), with the issue's targets.

Every case runs side by side with dense SDPA in one process, round-robin (dense, sparse, dense,
sparse, ...) after one warm-up call of each, with the same dtype and thread count. Rows report
min and median seconds, the speedup (dense / sparse) and how close it gets to two upper bounds,
both from `diffattn.sim` (the one source of truth for bounds):

  - token bound: ``simulate(...).token_bound`` = N^2 / attended pairs = N / prod(window);
  - tile bound: ``plan_bound(plan)`` = 1 / plan.density() of the CPU plan that is timed, i.e. the
    work the kernel actually does (partial tiles count as full).

Usage: ``python scripts/speedup.py [--quick] [--cases SUBSTR] [--no-natten] [--out DIR]``.
Writes ``DIR/speedup.json`` and ``DIR/speedup.md`` and prints the table plus PASS/MISS lines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

# run against the checkout this script lives in, not whichever diffattn happens to be installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffattn.functional import gna  # noqa: E402
from diffattn.methods.gna import gna_plan  # noqa: E402
from diffattn.sim import plan_bound, simulate  # noqa: E402

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


def time_round_robin(fns: dict[str, Callable[[], object]], repeats: int, label: str) -> dict[str, list[float]]:
    """One warm-up of each, then ``repeats`` rounds calling every fn in turn; seconds per call."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(-1, repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if rep >= 0:
                times[key].append(dt)
            what = "warm-up" if rep < 0 else f"rep {rep + 1}/{repeats}"
            log(f"  {label} {what} {key}: {dt:.3f} s")
    return times


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bounds(case: Case) -> tuple[float, float, bool]:
    """(token bound, tile bound of the timed plan, plan has masked tiles), all from `diffattn.sim`."""
    sim = simulate(case.grid, case.window, case.stride)
    plan = gna_plan(case.grid, sim.window, sim.stride, sim.dilation)  # the plan `gna(..., backend="cpu")` runs
    return sim.token_bound, plan_bound(plan), plan.has_mask


def timing_fields(dense: list[float], sparse: list[float], repeats: int) -> dict:
    """The row fields every benchmark row shares: shape, timings (min/median) and speedups."""
    d_min, d_med = min(dense), statistics.median(dense)
    s_min, s_med = min(sparse), statistics.median(sparse)
    return {
        "batch": BATCH,
        "heads": HEADS,
        "head_dim": HEAD_DIM,
        "repeats": repeats,
        "dense_min_s": d_min,
        "dense_median_s": d_med,
        "sparse_min_s": s_min,
        "sparse_median_s": s_med,
        "speedup_min": d_min / s_min,
        "speedup_median": d_med / s_med,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dense_times_s": dense,
        "sparse_times_s": sparse,
    }


def run_case(case: Case, repeats: int, natten_repeats: int, natten_heads: int) -> dict:
    """Time one case against dense SDPA; return its row."""
    q, k, v = make_qkv(case.grid, DTYPES[case.dtype])
    token_bound, tile_bound, masked = bounds(case)
    fns = {"dense": dense_fn(q, k, v)}
    if case.natten:
        natten_heads = natten_heads_per_call(math.prod(case.grid), natten_heads)
        fns["natten"] = natten_fn(q, k, v, case, natten_heads)
        repeats = natten_repeats
    fns["ours"] = ours_fn(q, k, v, case)
    times = time_round_robin(fns, repeats, case.name)
    timing = timing_fields(times["dense"], times["natten" if case.natten else "ours"], repeats)
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
        "note": "",
    }
    if case.natten:
        import natten

        o_min, o_med = min(times["ours"]), statistics.median(times["ours"])
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


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """The issue's targets over the rows present (N/A when a target has no row). Min-based speedups."""
    gna_rows = [r for r in rows if r["kind"] == "gna"]
    specs = [
        (
            "a",
            "tile-aligned strides reach >= 0.9 of the tile-density bound",
            [r for r in gna_rows if r["role"] in ("tile_aligned", "blocked")],
            "achieved_over_tile_bound",
            0.9,
        ),
        (
            "b",
            "blocked 2-D (stride = window) >= 7x faster than dense in both dtypes",
            [r for r in gna_rows if r["role"] == "blocked" and len(r["grid"]) == 2],
            "speedup_min",
            7.0,
        ),
        (
            "c",
            "stride 1 reaches >= 0.5 of the token-level bound",
            [r for r in gna_rows if r["role"] == "sliding"],
            "achieved_over_token_bound",
            0.5,
        ),
        (
            "d",
            "NATTEN CPU is >= 20x slower than ours on the same config",
            [r for r in rows if r["kind"] == "natten"],
            "natten_over_ours_min",
            20.0,
        ),
    ]
    targets = []
    for key, text, sel, metric, threshold in specs:
        checks = [{"case": r["case"], metric: r[metric], "pass": r[metric] >= threshold} for r in sel]
        status = "N/A" if not checks else "PASS" if all(c["pass"] for c in checks) else "MISS"
        targets.append(
            {
                "target": key,
                "description": text,
                "metric": metric,
                "threshold": threshold,
                "status": status,
                "rows": checks,
            }
        )
    return targets


def target_lines(targets: list[dict]) -> list[str]:
    lines = []
    for t in targets:
        detail = ", ".join(f"{c['case']}={c[t['metric']]:.2f}" for c in t["rows"]) or "no rows"
        rule = f"[{t['metric']} >= {t['threshold']}]"
        lines.append(f"{t['status']} ({t['target']}) {t['description']} {rule}: {detail}")
    return lines


def markdown(rows: list[dict], meta: dict, targets: list[dict]) -> str:
    head = (
        "| case | dtype | window | stride | dense min / med (s) | sparse min / med (s) | speedup min / med "
        "| token bound | tile bound | achieved / tile | achieved / token | threads | torch | note |"
    )
    lines = [
        "# diffattn GNA CPU speedup vs dense SDPA",
        "",
        f"{meta['date']}, machine `{meta['machine']}`, nproc {meta['nproc']}, torch {meta['torch']}, "
        f"{meta['threads']} threads, runtime {meta['runtime_s']:.0f} s{' (quick)' if meta['quick'] else ''}. "
        "Round-robin dense/sparse in one process, 1 warm-up each; speedup = dense / sparse.",
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
            f"| {r['achieved_over_tile_bound']:.2f} | {r['achieved_over_token_bound']:.2f} | {r['threads']} "
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


def method_bound(case: MethodCase, method: object) -> tuple[float, str]:
    """(FLOP bound, how it was computed) of the resolved config on the case's grid."""
    n = math.prod(case.grid)
    if case.method == "msw":
        window = math.prod(method.config.resolve_window(case.grid))  # type: ignore[attr-defined]
        return n / window, f"N / window {window}"
    if case.method == "proxy":
        layout = method.layout(case.grid)  # type: ignore[attr-defined]
        window = math.prod(method.config.resolve(case.grid))  # type: ignore[attr-defined]
        return n / (window + layout.num_windows), f"N / (window {window} + windows {layout.num_windows})"
    agents = math.prod(method.config.agent_grid(case.grid))  # type: ignore[attr-defined]
    return n / (2 * agents), f"N / (2 x {agents} agents)"


def _half_shift_timestep(method: object) -> float:
    """A timestep whose seeded msw draw (layer "bench") is a half-window shift, so the timed call
    really permutes tokens; 0 for methods that do not shift."""
    quarter = getattr(method.config, "shift_quarter", None)  # type: ignore[attr-defined]
    if quarter is None:
        return 0.0
    return next(float(t) for t in range(1000) if quarter("bench", float(t)) == 2)


def run_method_case(case: MethodCase, repeats: int) -> dict:
    """Time one proxy/agent case against dense SDPA; return its row."""
    from diffattn.methods import AttendCall, get_method

    cls = get_method(case.method)
    method = cls(cls.make_config(**dict(case.knobs)))
    q, k, v = make_qkv(case.grid, DTYPES[case.dtype])
    call = AttendCall(grid=case.grid, backend="cpu", layer="bench", timestep=_half_shift_timestep(method))
    bound, formula = method_bound(case, method)
    fns = {"dense": dense_fn(q, k, v), "ours": lambda: method.attend(q, k, v, call)}
    times = time_round_robin(fns, repeats, case.name)
    timing = timing_fields(times["dense"], times["ours"], repeats)
    return {
        "case": case.name,
        "kind": case.method,
        "knobs": dict(case.knobs),
        "grid": list(case.grid),
        "dtype": case.dtype,
        **timing,
        "flop_bound": bound,
        "bound_formula": formula,
        "achieved_over_bound": timing["speedup_min"] / bound,
    }


def method_targets(rows: list[dict]) -> list[dict]:
    """Target (e): every msw/proxy/agent row reaches >= 0.8 of its FLOP bound (min-based)."""
    checks = [{"case": r["case"], "achieved_over_bound": r["achieved_over_bound"]} for r in rows]
    for c in checks:
        c["pass"] = c["achieved_over_bound"] >= 0.8
    status = "N/A" if not checks else "PASS" if all(c["pass"] for c in checks) else "MISS"
    text = "msw, proxy and agent reach >= 0.8 of their FLOP bound"
    return [dict(target="e", description=text, metric="achieved_over_bound", threshold=0.8, status=status, rows=checks)]


def method_markdown(rows: list[dict], targets: list[dict]) -> str:
    head = (
        "| case | dtype | knobs | dense min / med (s) | sparse min / med (s) | speedup min / med "
        "| FLOP bound | achieved / bound |"
    )
    lines = ["", "## msw, proxy and agent vs dense SDPA", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["knobs"].items())
        lines.append(
            f"| {r['case']} | {r['dtype']} | {knobs} | {r['dense_min_s']:.3f} / {r['dense_median_s']:.3f} "
            f"| {r['sparse_min_s']:.3f} / {r['sparse_median_s']:.3f} "
            f"| {r['speedup_min']:.2f} / {r['speedup_median']:.2f} "
            f"| {r['flop_bound']:.2f} ({r['bound_formula']}) | {r['achieved_over_bound']:.2f} |"
        )
    lines += [""] + [f"- {line}" for line in target_lines(targets)]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output directory")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per case (after 1 warm-up)")
    p.add_argument("--quick", action="store_true", help="small grids and 2 repeats (smoke test)")
    p.add_argument("--cases", default="", help="only cases whose name contains this substring")
    p.add_argument("--no-natten", action="store_true", help="skip the NATTEN row")
    p.add_argument("--natten-repeats", type=int, default=2, help="timed repeats of the NATTEN row")
    p.add_argument(
        "--natten-heads-per-call", type=int, default=0, help="heads per NATTEN call; 0 = as many as fit 8 GB"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    natten_repeats = min(args.natten_repeats, repeats)
    warnings.filterwarnings("ignore", module=r"torch\.nn\.attention\.flex_attention")
    cases = [c for c in build_cases(args.quick) if args.cases in c.name and not (c.natten and args.no_natten)]
    method_cases = [c for c in build_method_cases(args.quick) if args.cases in c.name]
    if not cases and not method_cases:
        log(f"no case matches --cases {args.cases!r}")
        return 2
    start = time.perf_counter()
    rows = []
    for i, case in enumerate(cases, 1):
        log(f"[{i}/{len(cases)}] {case.name} ({torch.get_num_threads()} threads)")
        rows.append(run_case(case, repeats, natten_repeats, args.natten_heads_per_call))
    method_rows = []
    for i, mcase in enumerate(method_cases, 1):
        log(f"[method {i}/{len(method_cases)}] {mcase.name} ({torch.get_num_threads()} threads)")
        method_rows.append(run_method_case(mcase, repeats))
    targets = evaluate_targets(rows)
    mtargets = method_targets(method_rows)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
        "repeats": repeats,
        "runtime_s": time.perf_counter() - start,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "rows": rows, "targets": targets, "method_rows": method_rows, "method_targets": mtargets}
    (args.out / "speedup.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = markdown(rows, meta, targets) + (method_markdown(method_rows, mtargets) if method_rows else "")
    (args.out / "speedup.md").write_text(md)
    print(md)
    log(f"wrote {args.out / 'speedup.json'} and {args.out / 'speedup.md'} in {meta['runtime_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
