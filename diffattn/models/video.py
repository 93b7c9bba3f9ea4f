"""Video DiTs with 3-D token grids (frames, rows, columns): Wan 2.1, CogVideoX, HunyuanVideo, LTX."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..layout import TextPosition, TokenLayout
from .base import FamilyAdapter, ceil_div, patch_sizes


def _grid_cfhw(hidden_states: Any, config: Any, frames_axis: int) -> tuple[int, int, int]:
    pt, ph, pw = patch_sizes(config)
    f = hidden_states.shape[frames_axis]
    h, w = hidden_states.shape[-2:]
    return ceil_div(f, pt), ceil_div(h, ph), ceil_div(w, pw)


class _VideoAdapter(FamilyAdapter):
    """Video DiTs taking the latent video in ``hidden_states`` with a frames axis at ``frames_axis``;
    joint-attention ones put ``encoder_hidden_states`` at ``text_position`` of the sequence."""

    ndim = 3
    frames_axis = 2  # [B, C, F, H, W]
    text_position: TextPosition = "none"

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        grid = _grid_cfhw(call["hidden_states"], denoiser.config, self.frames_axis)
        if self.text_position == "none":
            return TokenLayout(grid=grid)
        text = call["encoder_hidden_states"]
        return TokenLayout(grid=grid, text_len=text.shape[1], text_position=self.text_position)


class WanAdapter(_VideoAdapter):
    name = "wan (Wan 2.1)"
    class_names = ("WanTransformer3DModel",)
    family = "wan"


class CogVideoXAdapter(_VideoAdapter):
    name = "cogvideox (CogVideoX)"
    class_names = ("CogVideoXTransformer3DModel",)
    family = "cogvideox"
    frames_axis = 1  # [B, F, C, H, W]
    text_position = "prefix"


class HunyuanVideoAdapter(_VideoAdapter):
    name = "hunyuanvideo (HunyuanVideo)"
    class_names = ("HunyuanVideoTransformer3DModel",)
    family = "hunyuanvideo"
    text_position = "suffix"

    def is_self_attention(self, name: str, module: nn.Module) -> bool:
        # the text-only token refiner must stay untouched
        return "token_refiner" not in name and super().is_self_attention(name, module)


class LTXAdapter(FamilyAdapter):
    name = "ltx (LTX-Video)"
    class_names = ("LTXVideoTransformer3DModel",)
    family = "ltx"
    ndim = 3

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        pt, ph, pw = patch_sizes(denoiser.config)
        f, h, w = (int(call[k]) for k in ("num_frames", "height", "width"))
        return TokenLayout(grid=(ceil_div(f, pt), ceil_div(h, ph), ceil_div(w, pw)))
