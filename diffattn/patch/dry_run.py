"""`dry_run`: the `summary` table for a pipeline at the requested resolution, from the first denoiser
call(s) only (``diffattn inspect``): patch, run until each denoiser has run once, remove."""

from __future__ import annotations

from typing import Any

from ..models.denoisers import denoisers_of
from .api import apply_attention
from .summary import summary


class _Seen(Exception):
    """Raised from a denoiser's forward hook once every denoiser of the pipeline has run once."""


def dry_run(pipe: Any, call_kwargs: dict[str, Any], method: str = "gna", **apply_kwargs: Any) -> str:
    """Patch ``pipe``, run ``pipe(**call_kwargs)`` only until each denoiser (``unet`` / ``transformer`` /
    ``transformer_2``) has run one forward, remove the patch, and return :func:`summary`'s table.

    Costs one denoiser call per denoiser, plus the steps before a second denoiser takes over (Wan 2.2's
    boundary) and the text encoders; the VAE decode is skipped. The pipeline is left exactly as it was.
    """
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
