"""The CPU engine benchmark (issue 22): GNA on the ``cpu`` backend against dense SDPA, on a quiet machine and
on a busy one, before and after. `scripts/bench_engine.py` is its command line.

Cases: the embedded model's shapes (batch 2 for CFG, 4 heads, head dim 32, fp32, window 8x8) at 32x32,
64x64 and 128x128 tokens with stride 1, and 64x64 blocked; and `scripts/speedup.py`'s 2-D fp32 rows
(128x128 tokens, 8 heads, head dim 64, window 32x32, stride 1 and blocked). Each case times, interleaved in
the same rounds after one warm-up each (`diffattn.report.timing`): dense SDPA, the engine (``after``:
``gna(..., backend="cpu")``) and, unless ``--baseline none``, the engine before issue 22 (``before``: its
``kernels/cpu.py`` read from git at ``--baseline``, on its fixed 16x16-tile plan, with the ``isfinite`` pass
its ``gna()`` made on every call). The ``threads`` study adds, for the 64x64 stride-1 case, the engine on the
caller's OpenMP threads without workers, and on one thread.

Conditions, in one run: ``quiet`` (nothing of ours running beside it; the host may still be shared: the
load average is recorded before and after) and ``busy`` (two processes spinning on the cores, as a shared
machine or a data-parallel run has). Every row shows the median time per call with its min-max, the
speedup (dense median / engine median) with the min-max of the per-round ratios, the token bound
(N / window), the tile bound of the plan that runs, the fraction of each reached and, on busy rows, the
fraction of the quiet speedup kept. Each median speedup, fraction of a bound and busy keeps carries its 95%
bootstrap interval over the rounds (``<field>_ci95``). Targets (issue 22) are checked on the ``after``
rows' medians, and name the rows whose interval holds the threshold (not decided by the run).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from ...functional import gna
from ...kernels import BlockPlan, batch_item_bytes, cpu, get_backend
from ...methods.gna import GNA, GNAConfig, gna_plan
from ..bounds import gna_bounds
from ..significance import bootstrap_interval
from ..targets import Target, check_targets, target_lines
from ..timing import Spread, labels, time_round_robin
from .common import log, run_meta, write_result

#: The commit of main before issue 22's engine (what ``before`` runs by default).
BASELINE_REF = "6656e32"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: Seconds of timed rounds a case gets at least (cheap cases: more rounds than asked, up to `MAX_ROUNDS`).
CASE_BUDGET_S = 5.0
#: Why up to 100: a busy 32x32 call's times cluster a scheduler tick (4 ms) apart, so a median of few rounds
#: jumps between clusters; the 95% interval of its busy keeps was 0.50-0.90 over 25 rounds, 0.62-0.86 over 80.
MAX_ROUNDS = 100


@dataclasses.dataclass(frozen=True)
class EngineCase:
    """One benchmark case: a GNA config on a grid, and the tensors' shape."""

    name: str
    grid: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    batch: int
    heads: int
    head_dim: int
    dtype: str = "fp32"

    @property
    def role(self) -> str:
        return "sliding" if set(self.stride) == {1} else "blocked" if self.stride == self.window else "strided"


def build_cases(quick: bool) -> list[EngineCase]:
    """The issue's cases; ``quick`` keeps the embedded model's 32x32 and 64x64 stride-1 rows only."""
    tiny = dict(window=(8, 8), batch=2, heads=4, head_dim=32)
    cases = [
        EngineCase("tiny-32x32-s1", (32, 32), stride=(1, 1), **tiny),
        EngineCase("tiny-64x64-s1", (64, 64), stride=(1, 1), **tiny),
    ]
    if quick:
        return cases
    wide = dict(window=(32, 32), batch=1, heads=8, head_dim=64)
    return cases + [
        EngineCase("tiny-128x128-s1", (128, 128), stride=(1, 1), **tiny),
        EngineCase("tiny-64x64-blocked", (64, 64), stride=(8, 8), **tiny),
        EngineCase("speedup-128x128-w32-s1", (128, 128), stride=(1, 1), **wide),
        EngineCase("speedup-128x128-w32-blocked", (128, 128), stride=(32, 32), **wide),
    ]


def _case(name: str) -> Callable[[dict], bool]:
    return lambda r: r["engine"] == "after" and r["case"] == name and r["condition"] == "quiet"


#: Issue 22's engine targets, on the median speedups of the ``after`` rows.
ENGINE_TARGETS = (
    Target("32", "embedded model 32x32 stride 1 >= 2x dense", "speedup_median", 2.0, _case("tiny-32x32-s1")),
    Target("64", "embedded model 64x64 stride 1 >= 8x dense", "speedup_median", 8.0, _case("tiny-64x64-s1")),
    Target("128", "embedded model 128x128 stride 1 >= 16x dense", "speedup_median", 16.0, _case("tiny-128x128-s1")),
    Target(
        "s1",
        "speedup.py 2-D stride 1 >= 0.5 of its token bound",
        "achieved_over_token_bound",
        0.5,
        _case("speedup-128x128-w32-s1"),
    ),
    Target(
        "blocked",
        "speedup.py 2-D blocked >= 0.9 of its tile bound",
        "achieved_over_tile_bound",
        0.9,
        _case("speedup-128x128-w32-blocked"),
    ),
    Target(
        "busy",
        "busy rows keep >= 0.7 of the quiet speedup",
        "busy_keeps",
        0.7,
        lambda r: r["engine"] == "after" and r["condition"] == "busy",
    ),
)


# --- the engine before issue 22 ------------------------------------------------------------------------------


def load_baseline(ref: str) -> tuple[types.ModuleType | None, str]:
    """The CPU kernel module of commit ``ref`` (its ``kernels/cpu.py``, run against today's `BlockPlan`),
    or None and why not (not a git checkout, unknown ref)."""
    root = Path(__file__).resolve().parents[3]
    try:
        done = subprocess.run(
            ["git", "show", f"{ref}:diffattn/kernels/cpu.py"], cwd=root, capture_output=True, text=True, check=False
        )
    except OSError as e:
        return None, f"git is not available ({e})"
    if done.returncode != 0:
        return None, f"git show {ref}:diffattn/kernels/cpu.py failed: {done.stderr.strip()}"
    module = types.ModuleType("diffattn.kernels._baseline_cpu")
    module.__package__ = "diffattn.kernels"  # its relative imports (.plan) resolve to today's package
    sys.modules[module.__name__] = module  # dataclasses look their module up while the code runs
    exec(compile(done.stdout, f"{ref}:diffattn/kernels/cpu.py", "exec"), module.__dict__)  # noqa: S102
    return module, ""


# --- timing ---------------------------------------------------------------------------------------------------


@contextmanager
def busy_cores(spinners: int) -> Iterator[None]:
    """``spinners`` processes spinning on the CPU for the duration (killed on exit, whatever happens)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(spinners)]
    try:
        time.sleep(1.0)  # let the scheduler see them
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _qkv(case: EngineCase, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (case.batch, math.prod(case.grid), case.heads, case.head_dim)
    return tuple(torch.randn(shape, generator=gen).to(DTYPES[case.dtype]) for _ in range(3))  # type: ignore[return-value]


def _with_threads(n: int, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(old)

    return run


def engines(case: EngineCase, baseline: types.ModuleType | None, threads_study: bool) -> dict[str, Callable]:
    """The functions timed for ``case``: dense, after, before (with a baseline), the threads study and, where
    the engine runs the case as strips or direct, the same plan forced tiled (``after-tiled``)."""
    q, k, v = _qkv(case)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    fns: dict[str, Callable[[], object]] = {
        "dense": lambda: torch.nn.functional.scaled_dot_product_attention(qh, kh, vh),
        "after": lambda: gna(q, k, v, case.grid, case.window, case.stride, backend="cpu"),
    }
    if baseline is not None:
        old_plan = gna_plan(case.grid, *GNAConfig(window=case.window, stride=case.stride).resolve(case.grid))

        def before() -> object:
            any(not torch.isfinite(t).all() for t in (q, k, v))  # the pass main's gna() made on every call
            return baseline.block_sparse_attention_cpu(q, k, v, old_plan)

        fns["before"] = before
    plan = _after_plan(case, q)
    if cpu.prepare_call(plan, q).path in ("strips", "direct"):  # what they win over the tiles, side by side
        fns["after-tiled"] = lambda: cpu.block_sparse_attention_cpu(q, k, v, plan, path="tiled")
    if threads_study:
        fns["after-omp"] = lambda: cpu.block_sparse_attention_cpu(q, k, v, plan, workers=1)
        fns["after-1thread"] = _with_threads(1, lambda: cpu.block_sparse_attention_cpu(q, k, v, plan, workers=1))
    return fns


def _after_plan(case: EngineCase, q: Tensor) -> BlockPlan:
    """The plan ``gna(..., backend="cpu")`` runs for ``case`` with queries like ``q`` (its tile depends on their
    bytes per batch item)."""
    method = GNA(GNAConfig(window=case.window, stride=case.stride))
    return method.plan(case.grid, get_backend("cpu"), batch_item_bytes(q))


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _path_label(engine: str, plan: BlockPlan, q: Tensor) -> str:
    if engine == "before":
        return "tiled(16x16 fixed)"
    return cpu.prepare(plan, q.dtype, "tiled").label if engine == "after-tiled" else cpu.prepare_call(plan, q).label


def _speedup(rounds: list[tuple[float, float]]) -> float:
    """Dense median over engine median of (dense, engine) rounds."""
    return statistics.median(d for d, _ in rounds) / statistics.median(e for _, e in rounds)


def _keeps(quiet: list[tuple[float, float]], busy: list[tuple[float, float]]) -> float:
    return _speedup(busy) / _speedup(quiet)


def case_rows(case: EngineCase, condition: str, times: dict[str, list[float]]) -> list[dict]:
    """One row per engine of ``case`` under ``condition`` (dense is each row's reference)."""
    n = math.prod(case.grid)
    q_shape = torch.empty(case.batch, n, case.heads, case.head_dim, dtype=DTYPES[case.dtype], device="meta")
    bounds = gna_bounds(case.grid, case.window, case.stride, item_bytes=batch_item_bytes(q_shape))
    after_plan = _after_plan(case, q_shape)
    before_plan = gna_plan(case.grid, *GNAConfig(window=case.window, stride=case.stride).resolve(case.grid))
    dense = _spread(times["dense"])
    rows = []
    for engine, ts in times.items():
        if engine == "dense":
            continue
        plan = before_plan if engine == "before" else after_plan
        tile_bound = 1.0 / plan.density()
        paired = list(zip(times["dense"], ts))  # per round: dense and engine ran back to back
        ratios = [d / s for d, s in paired]
        t = _spread(ts)
        speedup = _speedup(paired)
        low, high = bootstrap_interval(_speedup, [paired])
        rows.append({
            "case": case.name,
            "engine": engine,
            "condition": condition,
            "role": case.role,
            "grid": list(case.grid),
            "window": list(case.window),
            "stride": list(case.stride),
            "batch": case.batch,
            "heads": case.heads,
            "head_dim": case.head_dim,
            "dtype": case.dtype,
            "tokens": n,
            "path": _path_label(engine, plan, q_shape),
            "dense_median_s": dense["median"],
            "dense_min_s": dense["min"],
            "dense_max_s": dense["max"],
            "median_s": t["median"],
            "min_s": t["min"],
            "max_s": t["max"],
            "speedup_median": speedup,
            "speedup_median_ci95": [low, high],
            "speedup_round_min": min(ratios),
            "speedup_round_max": max(ratios),
            "rounds": len(ts),
            "labels": labels(speedup, Spread.of(ratios), tile_bound),
            "token_bound": bounds.token_bound,
            "tile_bound": tile_bound,
            "achieved_over_token_bound": speedup / bounds.token_bound,
            "achieved_over_token_bound_ci95": [low / bounds.token_bound, high / bounds.token_bound],
            "achieved_over_tile_bound": speedup / tile_bound,
            "achieved_over_tile_bound_ci95": [low / tile_bound, high / tile_bound],
            "dense_times_s": times["dense"],
            "times_s": ts,
        })  # fmt: skip
    return rows


def run_condition(
    condition: str, cases: list[EngineCase], rounds: int, baseline: types.ModuleType | None, threads_study: bool,
    budget_s: float = CASE_BUDGET_S,
) -> tuple[list[dict], dict]:
    """Every case under one condition (`case_rounds` each); its rows and the load averages seen before and after."""
    load_before = os.getloadavg()
    rows = []
    for i, case in enumerate(cases, 1):
        study = threads_study and case.name == "tiny-64x64-s1"
        log(f"[{condition} {i}/{len(cases)}] {case.name} ({torch.get_num_threads()} threads)")
        fns = engines(case, baseline, study)
        first = time_round_robin(fns, 1, warmup=1, log=log, label=case.name)
        more = case_rounds(sum(t[0] for t in first.values()), rounds, budget_s) - 1
        rest = time_round_robin(fns, more, warmup=0, log=log, label=case.name) if more else {k: [] for k in fns}
        rows += case_rows(case, condition, {k: first[k] + rest[k] for k in fns})
    return rows, {"before": list(load_before), "after": list(os.getloadavg())}


def case_rounds(round_s: float, rounds: int, budget_s: float = CASE_BUDGET_S) -> int:
    """Timed rounds of a case whose first round took ``round_s``: at least ``rounds``, and as many more as fit
    ``budget_s`` (up to `MAX_ROUNDS`): the cheap cases are the noisy ones, and their medians then rest on
    more rounds at little cost."""
    return max(rounds, min(MAX_ROUNDS, int(budget_s / max(round_s, 1e-9))))


def add_busy_keeps(rows: list[dict]) -> None:
    """On busy rows: the fraction of the same engine's quiet speedup kept (``busy_keeps``) and, where both rows
    carry their rounds, its 95% bootstrap interval (``busy_keeps_ci95``: the rounds of each condition redrawn,
    each round's dense and engine times together); and the seconds per call that the engine and dense lost to
    the busy cores (``busy_lost_s``, ``dense_busy_lost_s``; median against median). Why the lost times too:
    beside spinning processes a short call loses a roughly fixed time, not a share of its length, so a fast
    short call keeps less of its speedup while losing less time than dense."""
    quiet = {(r["case"], r["engine"]): r for r in rows if r["condition"] == "quiet"}
    for r in rows:
        q = quiet.get((r["case"], r["engine"]))
        if r["condition"] == "busy" and q is not None:
            r["busy_keeps"] = r["speedup_median"] / q["speedup_median"]
            r["busy_lost_s"] = r["median_s"] - q["median_s"]
            r["dense_busy_lost_s"] = r["dense_median_s"] - q["dense_median_s"]
            if r.get("times_s") and q.get("times_s"):
                samples = [list(zip(x["dense_times_s"], x["times_s"])) for x in (q, r)]
                r["busy_keeps_ci95"] = list(bootstrap_interval(_keeps, samples))


def run_benchmark(
    quick: bool, rounds: int, cases: str = "", baseline_ref: str = BASELINE_REF, busy: bool = True,
    spinners: int = 2, threads_study: bool = True,
) -> dict:  # fmt: skip
    """Every case whose name contains ``cases``, quiet then (``busy``) with ``spinners`` spinning processes.
    A ValueError if no case matches."""
    selected = [c for c in build_cases(quick) if cases in c.name]
    if not selected:
        raise ValueError(f"no case matches {cases!r}; cases: {[c.name for c in build_cases(quick)]}")
    baseline, why = (None, "--baseline none") if baseline_ref == "none" else load_baseline(baseline_ref)
    if baseline is None:
        log(f"no 'before' rows: {why}")
    budget = 0.0 if quick else CASE_BUDGET_S  # a smoke test: the rounds asked for, no more
    rows, loads = run_condition("quiet", selected, rounds, baseline, threads_study, budget)
    load = {"quiet": loads}
    if busy:
        with busy_cores(spinners):
            busy_rows, load["busy"] = run_condition("busy", selected, rounds, baseline, threads_study, budget)
        rows += busy_rows
    add_busy_keeps(rows)
    return {
        "rows": rows,
        "targets": check_targets(ENGINE_TARGETS, rows),
        "load_average": load,
        "baseline": {"ref": baseline_ref, "loaded": baseline is not None, "why_not": why},
        "spinners": spinners if busy else 0,
        "cost_model": dataclasses.asdict(cpu.COST),
    }


def not_quiet(payload: dict) -> str:
    """Why the ``quiet`` rows were not measured on a quiet machine, or ``""``: other work of half the cores or more,
    i.e. a 1-minute load average before them, or after them less this benchmark's own threads (which count in it)."""
    nproc = payload["meta"]["nproc"] or 1
    own = payload["meta"].get("threads") or nproc
    load = payload["load_average"].get("quiet")
    if load is None:
        return ""
    before, after = load["before"][0], load["after"][0]
    if max(before, after - own) < nproc / 2:
        return ""
    worst = max(before, after)
    return (f"the machine was not quiet: load average {worst:.2f} on {nproc} cores during the quiet rows ({own} of "
            "it this benchmark's own threads at most), so they are contended too and their speedups are not the "
            "engine's; rerun on an idle machine")  # fmt: skip


def _fmt(t: list[int]) -> str:
    return "x".join(map(str, t))


def markdown(payload: dict) -> str:
    meta = payload["meta"]
    lines = [
        "# diffattn CPU engine vs dense SDPA, quiet and busy, before and after",
        "",
        f"{meta['date']}, machine `{meta['machine']}`, nproc {meta['nproc']}, torch {meta['torch']}, "
        f"{meta['threads']} threads, runtime {meta['runtime_s']:.0f} s{' (quick)' if meta['quick'] else ''}, "
        f"at least {meta['rounds']} interleaved rounds after 1 warm-up (cases whose rounds are short get more, "
        f"up to {MAX_ROUNDS}, about {CASE_BUDGET_S:.0f} s of rounds each). "
        f"Busy = {payload['spinners']} processes spinning. "
        f"Before = `kernels/cpu.py` at {payload['baseline']['ref']}"
        + ("" if payload["baseline"]["loaded"] else f" (not run: {payload['baseline']['why_not']})")
        + ". Speedup = dense median / engine median, [min-max of the per-round ratios]. Busy keeps = busy speedup"
        " / quiet speedup, [its 95% bootstrap interval over the rounds]; the targets give each median's 95%"
        " bootstrap interval.",
        "",
    ]
    for condition, load in payload["load_average"].items():
        b, a = load["before"], load["after"]
        lines.append(f"- load average ({condition}): {b[0]:.2f} {b[1]:.2f} {b[2]:.2f} before, "
                     f"{a[0]:.2f} {a[1]:.2f} {a[2]:.2f} after")  # fmt: skip
    warning = not_quiet(payload)
    if warning:
        lines += ["", f"**WARNING: {warning}**"]
    head = (
        "| condition | case | engine | path | dense median (s) | engine median [min-max] (s) | speedup [rounds] "
        "| token bound | tile bound | of token | of tile | words | busy keeps [95%] | busy lost, dense / engine (ms) |"
    )
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
    for r in payload["rows"]:
        keeps = f"{r['busy_keeps']:.2f}" if "busy_keeps" in r else ""
        if "busy_keeps_ci95" in r:
            keeps += " [{:.2f}-{:.2f}]".format(*r["busy_keeps_ci95"])
        lost = f"{r['dense_busy_lost_s'] * 1e3:+.1f} / {r['busy_lost_s'] * 1e3:+.1f}" if "busy_lost_s" in r else ""
        lines.append(
            f"| {r['condition']} | {r['case']} ({_fmt(r['grid'])}, w{_fmt(r['window'])}, s{_fmt(r['stride'])}, "
            f"B{r['batch']} H{r['heads']} d{r['head_dim']} {r['dtype']}) | {r['engine']} | {r['path']} "
            f"| {r['dense_median_s']:.4f} | {r['median_s']:.4f} [{r['min_s']:.4f}-{r['max_s']:.4f}] "
            f"| {r['speedup_median']:.2f} [{r['speedup_round_min']:.2f}-{r['speedup_round_max']:.2f}] {r['rounds']} "
            f"| {r['token_bound']:.1f} | {r['tile_bound']:.1f} | {r['achieved_over_token_bound']:.2f} "
            f"| {r['achieved_over_tile_bound']:.2f} | {'; '.join(r['labels'])} | {keeps} | {lost} |"
        )
    lines += ["", "## Targets (after, median)", ""] + [f"- {line}" for line in target_lines(payload["targets"])]
    lines += [
        "",
        "Engines: `after` = `gna(..., backend=\"cpu\")` today; `after-omp` = the same plan without worker threads "
        "(the caller's OpenMP threads); `after-1thread` = the same on one thread; `after-tiled` = a case the engine "
        "runs as strips or direct, forced tiled; `before` = the engine of "
        f"{payload['baseline']['ref']}. Cost model: {payload['cost_model']}.",
    ]
    return "\n".join(lines) + "\n"


# --- the cost model's calibration -----------------------------------------------------------------------------


CALIBRATION_CONFIGS = (
    (16, 3, 1), (16, 8, 1), (24, 5, 1), (32, 3, 1), (32, 8, 1), (32, 16, 1), (48, 8, 1), (64, 3, 1),
    (64, 8, 1), (64, 16, 1), (64, 8, 4), (96, 8, 1), (128, 8, 1),
)  # fmt: skip
"""(grid side, window, stride) of the calibration: 2-D GNA, B 2, 4 heads, d 32, fp32."""


def _cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Least thread CPU time of ``fn`` over ``repeats`` calls after one warm-up: on one intra-op thread
    that is the work done, nearly unaffected by other processes sharing the cores."""
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def calibrate(repeats: int = 5, configs: tuple[tuple[int, int, int], ...] = CALIBRATION_CONFIGS) -> dict:
    """Fit `cpu.CpuCostModel` by least squares (relative error) to the single-thread CPU time of the tiled
    path over every power-of-two query tile of each config (and of the masked-sdpa path on grids of at
    most 2048 tokens), and its direct terms to the direct path's time on each config (where its kernel
    builds), and report, per config, the tile the fitted model picks against the fastest one."""
    batch, heads, head_dim = 2, 4, 32
    samples: list[dict] = []
    direct: list[dict] = []
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for side, window, stride in configs:
            grid = (side, side)
            n = side * side
            q, k, v = _qkv(EngineCase("calibrate", grid, (window,) * 2, (stride,) * 2, batch, heads, head_dim))
            resolved = GNAConfig(window=window, stride=stride).resolve(grid)
            seen = set()
            for a, b in ((a, b) for a in (1, 2, 4, 8, 16, 32) for b in (2, 4, 8, 16, 32) if a <= side and b <= side):
                plan = gna_plan(grid, *resolved, (a, b))
                shape = (plan.num_tiles, plan.q_index.shape[1], plan.kv_index.shape[1])
                if shape in seen or math.prod(shape) > 40e6:
                    continue
                seen.add(shape)
                run = functools.partial(cpu.block_sparse_attention_cpu, q, k, v, plan, path="tiled", workers=1)
                t = _cpu_seconds(run, repeats)
                samples.append({"config": [side, window, stride], "tile": [a, b], "tiles": shape[0],
                                "q_len": shape[1], "kv_len": shape[2], "tokens": n, "seconds": t})  # fmt: skip
                log(f"  {side}x{side} w{window} s{stride} tile {a}x{b}: {t * 1e3:8.2f} ms")
            prepared = cpu.PLANS.get(plan, torch.float32, "direct")  # not `prepare`: that raises where none runs
            if prepared.runs is not None and cpu.cpu_direct.library() is not None:
                run = functools.partial(cpu.block_sparse_attention_cpu, q, k, v, plan, path="direct", workers=1)
                t = _cpu_seconds(run, repeats)
                vectors = cpu.cpu_direct.score_vectors(prepared.runs.shape[1], prepared.run_len)
                direct.append({"config": [side, window, stride], "tokens": n, "score_vectors": vectors,
                               "keys": prepared.kv_len, "seconds": t})  # fmt: skip
                log(f"  {side}x{side} w{window} s{stride} direct: {t * 1e3:8.2f} ms")
    finally:
        torch.set_num_threads(old)
    bh = batch * heads
    x = torch.tensor(
        [[s["tiles"] * s["q_len"] * s["kv_len"], s["tiles"] * s["kv_len"], s["tiles"] * s["q_len"], s["tiles"],
          s["tokens"]] for s in samples], dtype=torch.float64,
    ) * bh  # fmt: skip
    y = torch.tensor([s["seconds"] for s in samples], dtype=torch.float64)
    w = 1 / y  # relative error
    coef = torch.linalg.lstsq(x * w[:, None], (y * w)[:, None]).solution.flatten().clamp_min(0)
    direct_fit = {}
    if len(direct) >= 3:  # per query: a fixed cost, the score vectors, the pairs
        xd = torch.tensor([[s["tokens"], s["tokens"] * s["score_vectors"], s["tokens"] * s["keys"]] for s in direct],
                          dtype=torch.float64) * bh
        yd = torch.tensor([s["seconds"] for s in direct], dtype=torch.float64)
        wd = 1 / yd
        fit = torch.linalg.lstsq(xd * wd[:, None], (yd * wd)[:, None]).solution.flatten().clamp_min(0)
        direct_fit = dict(zip(("direct_query_s", "direct_chunk_s", "direct_key_s"), (float(c) for c in fit)))
    model = dataclasses.replace(cpu.CpuCostModel(*(float(c) for c in coef)), **direct_fit)
    picks = []
    for config in {tuple(s["config"]) for s in samples}:
        mine = [s for s in samples if tuple(s["config"]) == config]
        best = min(mine, key=lambda s: s["seconds"])
        pick = min(mine, key=lambda s: model.tiled(s["tiles"], s["q_len"], s["kv_len"], s["tokens"]))
        picks.append({"config": list(config), "fastest_tile": best["tile"], "picked_tile": pick["tile"],
                      "picked_over_fastest": pick["seconds"] / best["seconds"]})  # fmt: skip
    rel = (x @ coef / y - 1).abs()
    return {
        "fit": dataclasses.asdict(model),
        "relative_error": {"median": float(rel.median()), "max": float(rel.max())},
        "picks": sorted(picks, key=lambda p: p["config"]),
        "model_in_use": dataclasses.asdict(cpu.COST),
        "shape": {"batch": batch, "heads": heads, "head_dim": head_dim, "dtype": "fp32"},
        "samples": samples,
        "direct_samples": direct,
    }


def run_and_write(
    out: Path, quick: bool = False, rounds: int | None = None, cases: str = "", baseline: str = BASELINE_REF,
    busy: bool = True, spinners: int = 2, threads_study: bool = True, calibrate_model: bool = False,
    argv: list[str] | None = None,
) -> int:  # fmt: skip
    """`scripts/bench_engine.py`: `run_benchmark` (``rounds`` default 7, 3 with ``quick``), then ``out/engine.json``
    and ``out/engine.md`` (printed); with ``calibrate_model``, `calibrate` to ``out/engine_calibration.{json,md}``
    instead. Exit status 2, with the error on stderr, when no case matches."""
    start = time.perf_counter()
    if calibrate_model:
        payload = calibrate()
        payload["meta"] = run_meta(argv, start, load_average=list(os.getloadavg()))
        fit = ", ".join(f"{k}={v:.3g}" for k, v in payload["fit"].items())
        lines = [
            "# CPU engine cost model calibration",
            "",
            f"Fit (seconds per batch x head, one thread): {fit}; relative error median "
            f"{payload['relative_error']['median']:.2f}, max {payload['relative_error']['max']:.2f}. "
            f"In use: {payload['model_in_use']}.",
            "",
            "| grid side, window, stride | fastest tile | picked tile | picked / fastest |",
            "|---|---|---|---|",
        ]
        lines += [f"| {p['config']} | {p['fastest_tile']} | {p['picked_tile']} | {p['picked_over_fastest']:.2f} |"
                  for p in payload["picks"]]  # fmt: skip
        write_result(out, "engine_calibration", payload, "\n".join(lines) + "\n")
        return 0
    rounds = 3 if quick else rounds or 7
    try:
        payload = run_benchmark(quick, rounds, cases, baseline, busy, spinners, threads_study)
    except ValueError as e:
        log(f"bench_engine.py: {e} (--cases)")
        return 2
    payload["meta"] = run_meta(argv, start, quick=quick, rounds=rounds)
    payload["not_quiet"] = not_quiet(payload)
    write_result(out, "engine", payload, markdown(payload))
    return 0
