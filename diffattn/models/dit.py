"""Image DiTs with separate cross-attention: PixArt-alpha/Sigma, class-conditional DiT and other
``Transformer2DModel``-style denoisers with a patch embedding."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..layout import TokenLayout
from .base import FamilyAdapter, ceil_div, patch_sizes


class DiTAdapter(FamilyAdapter):
    name = "dit (PixArt-alpha/Sigma, DiT)"
    class_names = ("PixArtTransformer2DModel", "DiTTransformer2DModel", "Transformer2DModel")
    ndim = 2

    def family_key(self, denoiser: nn.Module) -> str:
        """``pixart`` for PixArt-alpha/Sigma; other DiTs have no presets of their own (``dit``)."""
        return "pixart" if type(denoiser).__name__ == "PixArtTransformer2DModel" else "dit"

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        _, ph, pw = patch_sizes(denoiser.config)
        h, w = call["hidden_states"].shape[-2:]  # [B, C, H, W]
        return TokenLayout(grid=(ceil_div(h, ph), ceil_div(w, pw)))
