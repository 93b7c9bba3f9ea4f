"""Model-family adapters; `find_adapter` picks the one serving a denoiser."""

from __future__ import annotations

from torch import nn

from .base import FamilyAdapter
from .dit import DiTAdapter
from .mmdit import FluxAdapter, SD3Adapter
from .unet import UNetAdapter
from .video import CogVideoXAdapter, HunyuanVideoAdapter, LTXAdapter, WanAdapter

ADAPTERS: tuple[FamilyAdapter, ...] = (
    UNetAdapter(),
    DiTAdapter(),
    SD3Adapter(),
    FluxAdapter(),
    WanAdapter(),
    CogVideoXAdapter(),
    HunyuanVideoAdapter(),
    LTXAdapter(),
)


def supported_models() -> list[str]:
    """Denoiser class names diffattn can patch."""
    return sorted(n for a in ADAPTERS for n in a.class_names)


def family_key(denoiser: nn.Module) -> str:
    """Preset family of a denoiser: sd, sdxl, pixart, sd3, flux, wan, cogvideox, hunyuanvideo, ltx (or dit)."""
    return find_adapter(denoiser).family_key(denoiser)


def find_adapter(denoiser: nn.Module) -> FamilyAdapter:
    """The adapter for ``denoiser``; a TypeError naming the supported classes otherwise."""
    for adapter in ADAPTERS:
        if adapter.matches(denoiser):
            return adapter
    raise TypeError(
        f"unsupported denoiser {type(denoiser).__name__}; diffattn supports: {', '.join(supported_models())}"
    )


__all__ = ["ADAPTERS", "FamilyAdapter", "family_key", "find_adapter", "supported_models"]
