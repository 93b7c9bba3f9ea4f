"""Which denoisers a pipeline holds: the one lookup every part of diffattn uses (patching, the
high-resolution pipelines, the report's step timer, the tests)."""

from __future__ import annotations

from typing import Any

from torch import nn

#: pipeline attributes that hold a denoiser, in the order a pipeline runs them (Wan 2.2: high-noise
#: ``transformer`` first, then ``transformer_2``)
DENOISER_ATTRS = ("unet", "transformer", "transformer_2")


def uncompiled(module: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper runs: hooks and processors belong on it (the compiled
    wrapper calls it, so they take effect there too, after a guard-triggered recompile)."""
    return getattr(module, "_orig_mod", module)


def denoisers_of(target: Any) -> list[tuple[str, nn.Module]]:
    """``[(attribute, denoiser)]`` of a pipeline (every one of `DENOISER_ATTRS` it holds, uncompiled), or
    ``[("", target)]`` for a bare denoiser; a TypeError naming the accepted targets otherwise."""
    if isinstance(target, nn.Module):
        return [("", uncompiled(target))]
    found = [
        (a, uncompiled(getattr(target, a))) for a in DENOISER_ATTRS if isinstance(getattr(target, a, None), nn.Module)
    ]
    if not found:
        raise TypeError(
            f"cannot patch a {type(target).__name__}: expected a diffusers pipeline with one of "
            f"{DENOISER_ATTRS} or a denoiser nn.Module"
        )
    return found


def first_denoiser(target: Any) -> nn.Module:
    """The denoiser a pipeline runs first (its only one, except Wan 2.2's two experts)."""
    return denoisers_of(target)[0][1]
