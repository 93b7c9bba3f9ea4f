"""Real-width, reduced-depth denoisers built from diffusers configs with random weights (no downloads), and
one step's inputs: the workloads of the end-to-end benchmark (`bench.e2e`) and the FreeSwim benchmark
(`bench.freeswim`). Each model is built here and only here.

Full scale (``scale=1``), each at a resolution where attention matters:
  - `build_flux`: `FluxTransformer2DModel`, 2 double + 2 single blocks at full width (24 heads x 128),
    2048² image = 128x128 = 16,384 image tokens + 512 text tokens;
  - `build_sdxl`: SDXL's `UNet2DConditionModel` (all three levels, 320/640/1280 channels, SDXL's heads and
    cross-attention) with one resnet and one transformer layer per level, 2048² = 256² latent: attention
    grids 128x128 (10 heads x 64) and 64x64 (20 x 64);
  - `build_wan`: `WanTransformer3DModel` at Wan 2.1 1.3B width (`wan_transformer`: 12 heads x 128, FFN
    8960), 2 layers, 480x832 with 9 latent frames (33 video frames) = 9x30x52 = 14,040 tokens;
  - `wan_pipeline`: a whole ``WanPipeline`` (tiny VAE and text encoder) around a `wan_transformer`.
``scale`` multiplies the token grid per spatial side (frames, model width and depth stay; FLUX's text
length scales with the image token count).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

WAN_HEADS, WAN_HEAD_DIM, WAN_FFN = 12, 128, 8960
"""Wan 2.1 1.3B's width: attention heads, head dim and FFN width."""


@dataclasses.dataclass(frozen=True)
class Workload:
    """A built denoiser and one step's inputs. ``grid``: its finest image token grid; ``text_tokens``: text in
    its joint self-attention (0 when text sits in separate cross-attention)."""

    model: nn.Module
    inputs: dict[str, Any]
    grid: tuple[int, ...]
    text_tokens: int
    shape: str


def scaled_side(full: int, scale: float, multiple: int = 1) -> int:
    """``full * scale`` rounded to a multiple of ``multiple`` (at least ``multiple``)."""
    return max(multiple, round(full * scale / multiple) * multiple)


def seeded_randn(*shape: int, device: torch.device, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Standard normal ``shape`` drawn on the CPU from ``seed`` (the same on every device), then moved."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)


def make_model(device: torch.device, dtype: torch.dtype, fn: Callable[[], nn.Module]) -> nn.Module:
    """A seeded model initialized directly on ``device`` (no host copy of the weights), cast to ``dtype``."""
    torch.manual_seed(0)
    with torch.device(device):
        model = fn()
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)  # any buffer made off-device too


def build_flux(scale: float, device: torch.device, dtype: torch.dtype) -> Workload:
    from diffusers import FluxTransformer2DModel

    side, text = scaled_side(128, scale), max(8, round(512 * scale**2))
    model = make_model(
        device,
        dtype,
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=False,
            axes_dims_rope=(16, 56, 56),
        ),
    )
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).to(device, dtype)
    inputs = {
        "hidden_states": seeded_randn(1, side * side, 64, device=device, dtype=dtype, seed=1),
        "encoder_hidden_states": seeded_randn(1, text, 4096, device=device, dtype=dtype, seed=2),
        "pooled_projections": seeded_randn(1, 768, device=device, dtype=dtype, seed=3),
        "timestep": torch.tensor([0.5], device=device, dtype=dtype),
        "img_ids": img_ids,
        "txt_ids": torch.zeros(text, 3, device=device, dtype=dtype),
        "return_dict": False,
    }
    px = side * 16
    return Workload(model, inputs, (side, side), text, f"{px}x{px} px, {side}x{side} image + {text} text tokens")


def build_sdxl(scale: float, device: torch.device, dtype: torch.dtype) -> Workload:
    from diffusers import UNet2DConditionModel

    latent = scaled_side(256, scale, multiple=8)
    model = make_model(
        device,
        dtype,
        lambda: UNet2DConditionModel(
            sample_size=128,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            layers_per_block=1,  # SDXL: 2
            attention_head_dim=(5, 10, 20),  # legacy name: heads per level (head dim 64)
            transformer_layers_per_block=(1, 1, 1),  # SDXL: (1, 2, 10)
            use_linear_projection=True,
            cross_attention_dim=2048,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),
    )
    inputs = {
        "sample": seeded_randn(1, 4, latent, latent, device=device, dtype=dtype, seed=1),
        "timestep": torch.tensor([500], device=device),
        "encoder_hidden_states": seeded_randn(1, 77, 2048, device=device, dtype=dtype, seed=2),
        "added_cond_kwargs": {
            "text_embeds": seeded_randn(1, 1280, device=device, dtype=dtype, seed=3),
            "time_ids": torch.tensor([[latent * 8] * 2 + [0, 0] + [latent * 8] * 2], device=device, dtype=dtype),
        },
        "return_dict": False,
    }
    top = latent // 2
    shape = f"{latent * 8}x{latent * 8} px, attention grids {top}x{top} and {top // 2}x{top // 2}"
    return Workload(model, inputs, (top, top), 0, shape)


def wan_transformer(layers: int, device: torch.device, dtype: torch.dtype, text_dim: int = 4096) -> nn.Module:
    """`WanTransformer3DModel` at Wan 2.1 1.3B width (`WAN_HEADS` x `WAN_HEAD_DIM`, FFN `WAN_FFN`; 1.3B has 30
    layers), seeded, on ``device`` in ``dtype``; ``text_dim``: width of the text embeddings it reads."""
    from diffusers import WanTransformer3DModel

    return make_model(
        device,
        dtype,
        lambda: WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=WAN_HEADS,
            attention_head_dim=WAN_HEAD_DIM,
            in_channels=16,
            out_channels=16,
            text_dim=text_dim,
            freq_dim=256,
            ffn_dim=WAN_FFN,
            num_layers=layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            rope_max_seq_len=1024,
        ),
    )


def build_wan(scale: float, device: torch.device, dtype: torch.dtype, frames: int = 9, layers: int = 2) -> Workload:
    rows, cols = scaled_side(30, scale), scaled_side(52, scale)
    model = wan_transformer(layers, device, dtype)
    inputs = {
        "hidden_states": seeded_randn(1, 16, frames, 2 * rows, 2 * cols, device=device, dtype=dtype, seed=1),
        "timestep": torch.tensor([500], device=device),
        "encoder_hidden_states": seeded_randn(1, 512, 4096, device=device, dtype=dtype, seed=2),
        "return_dict": False,
    }
    shape = f"{rows * 16}x{cols * 16} px, {4 * frames - 3} frames = {frames}x{rows}x{cols} tokens"
    return Workload(model, inputs, (frames, rows, cols), 0, shape)


def wan_pipeline(layers: int, dtype: torch.dtype) -> Any:
    """The tiny Wan pipeline (tiny VAE and text encoder, CPU) with a `wan_transformer` of ``layers`` layers in
    ``dtype`` as its denoiser; progress bar off."""
    from ...tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("tiny-wan")
    text_dim = pipe.transformer.config.text_dim  # the tiny text encoder's width
    pipe.transformer = wan_transformer(layers, torch.device("cpu"), dtype, text_dim=text_dim)
    pipe.set_progress_bar_config(disable=True)
    return pipe
