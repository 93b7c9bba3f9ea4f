"""Video DiTs with 3-D token grids (frames, rows, columns): Wan 2.1, CogVideoX, HunyuanVideo, LTX."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..layout import TokenLayout
from .base import FamilyAdapter, ceil_div, patch_sizes


def _grid_cfhw(hidden_states: Any, config: Any, frames_axis: int) -> tuple[int, int, int]:
    pt, ph, pw = patch_sizes(config)
    f = hidden_states.shape[frames_axis]
    h, w = hidden_states.shape[-2:]
    return ceil_div(f, pt), ceil_div(h, ph), ceil_div(w, pw)


class WanAdapter(FamilyAdapter):
    name = "wan (Wan 2.1)"
    class_names = ("WanTransformer3DModel",)
    ndim = 3

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        return TokenLayout(grid=_grid_cfhw(call["hidden_states"], denoiser.config, 2))  # [B, C, F, H, W]


class CogVideoXAdapter(FamilyAdapter):
    name = "cogvideox (CogVideoX)"
    class_names = ("CogVideoXTransformer3DModel",)
    ndim = 3

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        text = call["encoder_hidden_states"]
        return TokenLayout(
            grid=_grid_cfhw(call["hidden_states"], denoiser.config, 1),  # [B, F, C, H, W]
            text_len=text.shape[1],
            text_position="prefix",
        )


class HunyuanVideoAdapter(FamilyAdapter):
    name = "hunyuanvideo (HunyuanVideo)"
    class_names = ("HunyuanVideoTransformer3DModel",)
    ndim = 3

    def is_self_attention(self, name: str, module: nn.Module) -> bool:
        # the text-only token refiner must stay untouched
        return "token_refiner" not in name and super().is_self_attention(name, module)

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        text = call["encoder_hidden_states"]
        return TokenLayout(
            grid=_grid_cfhw(call["hidden_states"], denoiser.config, 2),  # [B, C, F, H, W]
            text_len=text.shape[1],
            text_position="suffix",
        )


class LTXAdapter(FamilyAdapter):
    name = "ltx (LTX-Video)"
    class_names = ("LTXVideoTransformer3DModel",)
    ndim = 3

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        pt, ph, pw = patch_sizes(denoiser.config)
        f, h, w = (int(call[k]) for k in ("num_frames", "height", "width"))
        return TokenLayout(grid=(ceil_div(f, pt), ceil_div(h, ph), ceil_div(w, pw)))
