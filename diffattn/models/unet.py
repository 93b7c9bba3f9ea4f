"""SD 1.5 / 2.1 / SDXL UNets: image-only self-attention (``attn1``) at every resolution level."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..layout import TokenLayout
from .base import FamilyAdapter


class UNetAdapter(FamilyAdapter):
    name = "unet (SD 1.5 / 2.1 / SDXL)"
    class_names = ("UNet2DConditionModel",)
    ndim = 2

    def family_key(self, denoiser: nn.Module) -> str:
        """``sdxl`` when the UNet takes SDXL's extra text/time embeddings, else ``sd`` (1.5 / 2.1)."""
        return "sdxl" if getattr(denoiser.config, "addition_embed_type", None) == "text_time" else "sd"

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        sample = call["sample"]  # [B, C, H, W]
        return TokenLayout(grid=tuple(sample.shape[-2:]), multiscale=True)
