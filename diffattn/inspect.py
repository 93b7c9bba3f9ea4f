"""What a patch does per module, before and after a long generation (issue 10, deliverable 6).

`summary`: per patched module its family, attention kind, the grid and dense (text / extra) token counts it
last saw, the method and knobs, the method's FLOP bound there, and the sparse / fallback / dense counts,
warning loudly about any module that ran but never sparse. `dry_run`: the same table for a pipeline at the
requested resolution, from the first denoiser call(s) only (``diffattn inspect``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .patch import AttentionHandle

logger = logging.getLogger("diffattn")

_COLUMNS = ("module", "family", "kind", "grid", "text", "extra", "method", "bound", "sparse", "fallback", "dense")


def summary(handle: AttentionHandle) -> str:
    """A text table, one row per patched module; grid, text tokens (outside the latent stream), extra tokens
    (references, registers) and bound are ``-`` until the module has run sparse once. Modules that ran
    without ever running sparse are listed under a WARNING line (and logged as a warning)."""
    method = handle.method
    knobs = ", ".join(f"{k}={v}" for k, v in vars(method.config).items()) if method.config is not None else ""
    rows, never = [], []
    for denoiser, rt in handle._runtimes.items():
        family = rt.adapter.family_key(denoiser)
        for name, s in rt.stats.items():
            runs = handle.temporal_method if s.kind == "temporal" and handle.temporal_method else method
            bound = "-"
            if s.grid is not None:
                try:
                    bound = f"{runs.flop_bound(s.grid, s.extra).value:.2f}x"
                except (NotImplementedError, ValueError) as e:
                    bound = f"n/a ({e})"
            kind = s.kind if s.kind == "cross" or not s.extra else "joint"
            grid = "x".join(map(str, s.grid)) if s.grid is not None else "-"
            counts = (str(s.sparse), str(s.fallback), str(s.dense))
            dense = (str(s.text), str(s.extra - s.text)) if s.grid is not None else ("-", "-")
            rows.append((name, family, kind, grid, *dense, runs.name, bound, *counts))
            if s.kind != "cross" and s.sparse == 0 and s.fallback + (0 if runs.passthrough else s.dense) > 0:
                never.append(name)
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(_COLUMNS)]
    lines = [f"diffattn: {method.name} ({knobs}) on {len(rows)} modules, backend {handle.backend.name}"]
    if handle.temporal_method is not None:
        lines[0] += f"; temporal attention: 1-D gna window {handle.temporal_method.config.window}"
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in (_COLUMNS, *rows)]
    if never:
        warning = f"WARNING: {len(never)} module(s) ran but never sparse (see the fallback reasons logged): "
        lines.append(warning + ", ".join(never))
        logger.warning("diffattn: %s", lines[-1])
    return "\n".join(lines)


class _Seen(Exception):
    """Raised from a denoiser's forward hook once every denoiser of the pipeline has run once."""


def dry_run(pipe: Any, call_kwargs: dict[str, Any], method: str = "gna", **apply_kwargs: Any) -> str:
    """Patch ``pipe``, run ``pipe(**call_kwargs)`` only until each denoiser (``unet`` / ``transformer`` /
    ``transformer_2``) has run one forward, remove the patch, and return :func:`summary`'s table.

    Costs one denoiser call per denoiser, plus the steps before a second denoiser takes over (Wan 2.2's
    boundary) and the text encoders; the VAE decode is skipped. The pipeline is left exactly as it was.
    """
    from .patch import apply_attention
    from .patch.select import denoisers_of

    handle = apply_attention(pipe, method, **apply_kwargs)
    denoisers = [d for _, d in denoisers_of(pipe)]
    seen: set[int] = set()

    def mark(module: Any, args: Any, output: Any) -> None:
        seen.add(id(module))
        if len(seen) == len(denoisers):
            raise _Seen

    hooks = [d.register_forward_hook(mark) for d in denoisers]
    try:
        pipe(**call_kwargs)
    except _Seen:
        pass
    finally:
        for hook in hooks:
            hook.remove()
        table = summary(handle)
        handle.remove()
    unseen = len(denoisers) - len(seen)
    note = f"\n{unseen} denoiser(s) never ran in this call: their modules show '-'" if unseen else ""
    return f"dry run: one call per denoiser at the requested size\n{table}{note}"
