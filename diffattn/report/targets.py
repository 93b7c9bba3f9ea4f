"""Performance targets as data, checked by pure functions over benchmark rows (plain dicts).

A target selects the rows it is about and asks one metric of each to reach a threshold. Its status
is PASS when every selected row does, MISS when any does not, and N/A when no row is selected. A row that
also carries a 95% interval of the metric (``<metric>_ci95``) shows it, and a row whose interval holds the
threshold is listed as ``undecided``: the status then rests on a point that the run's noise could move
across the threshold, and the lines say so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Target:
    """``rows`` it selects must each reach ``metric >= threshold``."""

    key: str
    description: str
    metric: str
    threshold: float
    selects: Callable[[dict], bool]


def check_target(target: Target, rows: Sequence[dict]) -> dict:
    """JSON-ready result of ``target`` over ``rows``: status plus one check per selected row."""
    checks = []
    for r in rows:
        if not target.selects(r):
            continue
        value = r.get(target.metric)
        if not isinstance(value, int | float):
            raise KeyError(f"row {r.get('case', r)!r} has no numeric {target.metric!r} for target {target.key}")
        check = {"case": r["case"], target.metric: value, "pass": value >= target.threshold}
        interval = r.get(f"{target.metric}_ci95")
        if interval is not None:
            check["ci95"] = list(interval)
        checks.append(check)
    status = "N/A" if not checks else "PASS" if all(c["pass"] for c in checks) else "MISS"
    return {
        "target": target.key,
        "description": target.description,
        "metric": target.metric,
        "threshold": target.threshold,
        "status": status,
        "rows": checks,
        "undecided": [c["case"] for c in checks if "ci95" in c and c["ci95"][0] < target.threshold <= c["ci95"][1]],
    }


def check_targets(targets: Sequence[Target], rows: Sequence[dict]) -> list[dict]:
    return [check_target(t, rows) for t in targets]


def target_lines(results: Sequence[dict]) -> list[str]:
    """One ``STATUS (key) description [metric >= threshold]: case=value [95% interval], ...`` line per result,
    ending in words on the rows whose interval holds the threshold."""
    lines = []
    for t in results:
        detail = ", ".join(f"{c['case']}={c[t['metric']]:.2f}{_interval_text(c)}" for c in t["rows"]) or "no rows"
        rule = f"[{t['metric']} >= {t['threshold']}]"
        undecided = t.get("undecided") or []
        note = (f"; undecided by this run (95% interval holds {t['threshold']}): {', '.join(undecided)}"
                if undecided else "")  # fmt: skip
        lines.append(f"{t['status']} ({t['target']}) {t['description']} {rule}: {detail}{note}")
    return lines


def _interval_text(check: dict) -> str:
    return f" [{check['ci95'][0]:.2f}-{check['ci95'][1]:.2f}]" if "ci95" in check else ""


def _gna(role: tuple[str, ...], ndim: int | None = None) -> Callable[[dict], bool]:
    return lambda r: r["kind"] == "gna" and r["role"] in role and (ndim is None or len(r["grid"]) == ndim)


#: The kernel benchmark's targets (issue 3/4), min-based speedups.
KERNEL_TARGETS = (
    Target(
        "a",
        "tile-aligned strides reach >= 0.9 of the tile-density bound",
        "achieved_over_tile_bound",
        0.9,
        _gna(("tile_aligned", "blocked")),
    ),
    Target(
        "b",
        "blocked 2-D (stride = window) >= 7x faster than dense in both dtypes",
        "speedup_min",
        7.0,
        _gna(("blocked",), 2),
    ),
    Target(
        "c",
        "stride 1 reaches >= 0.5 of the token-level bound",
        "achieved_over_token_bound",
        0.5,
        _gna(("sliding",)),
    ),
    Target(
        "d",
        "NATTEN CPU is >= 20x slower than ours on the same config",
        "natten_over_ours_min",
        20.0,
        lambda r: r["kind"] == "natten",
    ),
)

#: Target (e): msw, proxy and agent rows against their FLOP bound.
METHOD_TARGETS = (
    Target(
        "e",
        "msw, proxy and agent reach >= 0.8 of their FLOP bound",
        "achieved_over_bound",
        0.8,
        lambda r: r["kind"] in ("msw", "proxy", "agent"),
    ),
)
