"""`summary`: what a patch does per module, as a text table (``handle.summary()``, ``diffattn inspect``).

Per patched module: its family, attention kind, the grid and dense (text / extra) token counts it last saw,
the method and knobs, the method's FLOP bound there, the sparse / fallback / dense counts and the kernel
path its sparse calls took (e.g. ``tiled(4x4)`` or ``masked-sdpa`` on the cpu backend), warning loudly
about any module that ran but never sparse. Reads only the handle's public API."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .install import AttentionHandle

logger = logging.getLogger("diffattn")

_COLUMNS = (
    "module", "family", "kind", "grid", "text", "extra", "method", "bound", "sparse", "fallback", "dense", "path",
)  # fmt: skip


def _paths(paths: dict[str, int]) -> str:
    """One path as is; several with their call counts, most used first (no spaces: one table cell)."""
    if len(paths) <= 1:
        return next(iter(paths), "-")
    return ",".join(f"{p}:{n}" for p, n in sorted(paths.items(), key=lambda item: -item[1]))


def summary(handle: AttentionHandle) -> str:
    """A text table, one row per patched module; grid, text tokens (outside the latent stream), extra tokens
    (references, registers) and bound are ``-`` until the module has run sparse once. Modules that ran
    without ever running sparse are listed under a WARNING line (and logged as a warning)."""
    method = handle.method
    describe = getattr(method, "describe_plan", None)  # a calibrated plan: its own table follows
    if describe is not None:
        knobs = repr(method.config)
    else:
        knobs = ", ".join(f"{k}={v}" for k, v in vars(method.config).items()) if method.config is not None else ""
    rows, never = [], []
    families = handle.families()
    for name, s in handle.stats().items():
        runs = handle.temporal_method if s.kind == "temporal" and handle.temporal_method else method
        bound = "-"
        if s.grid is not None:
            try:
                bound = f"{runs.module_flop_bound(name, s.grid, s.extra).value:.2f}x"
            except (NotImplementedError, ValueError) as e:
                bound = f"n/a ({e})"
        label = runs.describe_module(name)
        kind = s.kind if s.kind == "cross" or not s.extra else "joint"
        grid = "x".join(map(str, s.grid)) if s.grid is not None else "-"
        counts = (str(s.sparse), str(s.fallback), str(s.dense))
        dense = (str(s.text), str(s.extra - s.text)) if s.grid is not None else ("-", "-")
        rows.append((name, families[name], kind, grid, *dense, label, bound, *counts, _paths(s.paths)))
        if s.kind != "cross" and s.sparse == 0 and s.fallback + (0 if runs.passthrough else s.dense) > 0:
            never.append(name)
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(_COLUMNS)]
    lines = [f"diffattn: {method.name} ({knobs}) on {len(rows)} modules, backend {handle.backend.name}"]
    if handle.temporal_method is not None:
        lines[0] += f"; temporal attention: 1-D gna window {handle.temporal_method.config.window}"
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in (_COLUMNS, *rows)]
    if describe is not None:
        lines += ["", describe()]
    if never:
        warning = f"WARNING: {len(never)} module(s) ran but never sparse (see the fallback reasons logged): "
        lines.append(warning + ", ".join(never))
        logger.warning("diffattn: %s", lines[-1])
    return "\n".join(lines)
