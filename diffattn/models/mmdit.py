"""Joint-attention image DiTs: SD3 (``[img, txt]``) and FLUX (``[txt, img]``, double and single
blocks; the single blocks get no text input, so the text length comes from the pre-hook)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..layout import TokenLayout
from .base import FamilyAdapter, ceil_div, patch_sizes


class SD3Adapter(FamilyAdapter):
    name = "sd3 (Stable Diffusion 3 / 3.5)"
    class_names = ("SD3Transformer2DModel",)
    family = "sd3"
    ndim = 2

    def is_self_attention(self, name: str, module: nn.Module) -> bool:
        # SD3.5's `attn2` is a second image self-attention, not cross-attention
        return not getattr(module, "is_cross_attention", False)

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        _, ph, pw = patch_sizes(denoiser.config)
        h, w = call["hidden_states"].shape[-2:]  # [B, C, H, W]
        text = call.get("encoder_hidden_states")
        return TokenLayout(
            grid=(ceil_div(h, ph), ceil_div(w, pw)),
            text_len=0 if text is None else text.shape[1],
            text_position="suffix",
        )


class FluxAdapter(FamilyAdapter):
    name = "flux (FLUX.1)"
    class_names = ("FluxTransformer2DModel",)
    family = "flux"
    ndim = 2
    timestep_scale = 1000.0  # the pipeline passes t / 1000

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        # latents are packed 2x2; img_ids [S, 3] hold (0, row, col) of each image token
        ids = call["img_ids"]
        ids = ids[0] if ids.dim() == 3 else ids
        grid = (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
        text = call.get("encoder_hidden_states")
        return TokenLayout(grid=grid, text_len=0 if text is None else text.shape[1], text_position="prefix")
