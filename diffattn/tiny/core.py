"""Builders of the ten core random-weight pipelines (SD, SDXL, PixArt-alpha/sigma, SD3, FLUX, CogVideoX, Wan 2.1,
HunyuanVideo, LTX): configs only, random weights from a seed, every component small enough that a two-step
call takes well under a second on a CPU, with a denoiser grid large enough that sparse attention differs
from dense."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import DiffusionPipeline

from .encoders import TEXT_LEN, clip_text, clip_tokenizer, llama_text, llama_tokenizer, t5_text, t5_tokenizer


def seeded(seed: int, fn: Callable[[], Any]) -> Any:
    """``fn()`` right after seeding the global torch RNG: its random weights depend on ``seed`` only."""
    torch.manual_seed(seed)
    return fn()


def vae_kl(latent_channels: int = 4, **extra: Any) -> Any:
    """Two-level AutoencoderKL (spatial factor 2) without attention."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        mid_block_add_attention=False,
        **extra,
    )


def build_sd(seed: int) -> DiffusionPipeline:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tok = clip_tokenizer()
    unet = seeded(
        seed,
        lambda: UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            attention_head_dim=(4, 8),  # legacy name: number of heads -> head_dim 8 at both levels
            cross_attention_dim=32,
            norm_num_groups=8,
        ),
    )
    return StableDiffusionPipeline(
        vae=seeded(seed, lambda: vae_kl(scaling_factor=0.18215)),
        text_encoder=seeded(seed, lambda: clip_text(tok, 32)),
        tokenizer=tok,
        unet=unet,
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl(seed: int) -> DiffusionPipeline:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tok, tok2 = clip_tokenizer(), clip_tokenizer()
    time_dim, proj_dim = 8, 16
    unet = seeded(
        seed,
        lambda: UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(16, 32, 64),
            layers_per_block=1,
            attention_head_dim=(2, 4, 8),  # legacy name: number of heads -> head_dim 8
            transformer_layers_per_block=(1, 1, 1),
            use_linear_projection=True,
            cross_attention_dim=64,  # 32 (encoder 1) + 32 (encoder 2)
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=6 * time_dim + proj_dim,
            norm_num_groups=8,
        ),
    )
    return StableDiffusionXLPipeline(
        vae=seeded(seed, lambda: vae_kl(scaling_factor=0.13025)),
        text_encoder=seeded(seed, lambda: clip_text(tok, 32)),
        text_encoder_2=seeded(seed + 1, lambda: clip_text(tok2, 32, projection=proj_dim)),
        tokenizer=tok,
        tokenizer_2=tok2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
            steps_offset=1,
        ),
        force_zeros_for_empty_prompt=True,
    )


def build_pixart(seed: int, sigma: bool) -> DiffusionPipeline:
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )

    tok = t5_tokenizer()
    transformer = seeded(
        seed,
        lambda: PixArtTransformer2DModel(
            sample_size=16,
            num_layers=2,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_channels=32,
            in_channels=4,
            cross_attention_dim=32,
            out_channels=8,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            interpolation_scale=2 if sigma else 1,
        ),
    )
    if sigma:
        scheduler: Any = DPMSolverMultistepScheduler(
            beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon"
        )
    else:
        scheduler = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    return cls(
        tokenizer=tok,
        text_encoder=seeded(seed, lambda: t5_text(tok, 32)),
        vae=seeded(seed, lambda: vae_kl(scaling_factor=0.18215)),
        transformer=transformer,
        scheduler=scheduler,
    )


def build_sd3(seed: int) -> DiffusionPipeline:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, tok2, tok3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
    transformer = seeded(
        seed,
        lambda: SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=32,  # T5 d_model == 16 + 16 (CLIP hidden sizes)
            caption_projection_dim=32,
            pooled_projection_dim=32,  # 16 + 16 (CLIP projection dims)
            pos_embed_max_size=64,
        ),
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=seeded(seed, lambda: vae_kl(scaling_factor=1.5305, shift_factor=0.0609)),
        text_encoder=seeded(seed, lambda: clip_text(tok, 16, projection=16)),
        tokenizer=tok,
        text_encoder_2=seeded(seed + 1, lambda: clip_text(tok2, 16, projection=16)),
        tokenizer_2=tok2,
        text_encoder_3=seeded(seed, lambda: t5_text(tok3, 32)),
        tokenizer_3=tok3,
    )


def build_flux(seed: int) -> DiffusionPipeline:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    transformer = seeded(
        seed,
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,  # 4 latent channels x 2x2 packing
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
        ),
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=seeded(seed, lambda: vae_kl(scaling_factor=0.3611, shift_factor=0.1159)),
        text_encoder=seeded(seed, lambda: clip_text(tok, 32)),
        tokenizer=tok,
        text_encoder_2=seeded(seed, lambda: t5_text(tok2, 32)),
        tokenizer_2=tok2,
        transformer=transformer,
    )


def build_cogvideox(seed: int) -> DiffusionPipeline:
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    tok = t5_tokenizer()
    transformer = seeded(
        seed,
        lambda: CogVideoXTransformer3DModel(
            num_attention_heads=4,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            time_embed_dim=16,
            text_embed_dim=32,
            num_layers=2,
            sample_width=12,
            sample_height=12,
            sample_frames=9,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=TEXT_LEN,
        ),
    )
    vae = seeded(
        seed,
        lambda: AutoencoderKLCogVideoX(
            block_out_channels=(8, 8, 8, 8),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
        ),
    )
    return CogVideoXPipeline(
        tokenizer=tok,
        text_encoder=seeded(seed, lambda: t5_text(tok, 32)),
        vae=vae,
        transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            prediction_type="v_prediction",
            rescale_betas_zero_snr=True,
            set_alpha_to_one=True,
            timestep_spacing="trailing",
            snr_shift_scale=3.0,
        ),
    )


def build_wan(seed: int) -> DiffusionPipeline:
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    tok = t5_tokenizer()
    vae = seeded(
        seed,
        lambda: AutoencoderKLWan(
            base_dim=4,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        ),
    )
    transformer = seeded(
        seed,
        lambda: WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=16,
            out_channels=16,
            text_dim=32,
            freq_dim=32,
            ffn_dim=48,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ),
    )
    return WanPipeline(
        tokenizer=tok,
        text_encoder=seeded(seed, lambda: t5_text(tok, 32, umt5=True)),
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )


def build_hunyuanvideo(seed: int) -> DiffusionPipeline:
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    tok, tok2 = llama_tokenizer(), clip_tokenizer(77)
    transformer = seeded(
        seed,
        lambda: HunyuanVideoTransformer3DModel(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=10,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            patch_size=1,
            patch_size_t=1,
            guidance_embeds=True,
            text_embed_dim=16,
            pooled_projection_dim=8,
            rope_axes_dim=(2, 4, 4),
        ),
    )
    vae = seeded(
        seed,
        lambda: AutoencoderKLHunyuanVideo(
            latent_channels=4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            norm_num_groups=4,
            spatial_compression_ratio=8,
            temporal_compression_ratio=4,
            mid_block_add_attention=False,
        ),
    )
    return HunyuanVideoPipeline(
        text_encoder=seeded(seed, lambda: llama_text(tok, 16)),
        tokenizer=tok,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=seeded(seed, lambda: clip_text(tok2, 8, positions=77)),
        tokenizer_2=tok2,
    )


def build_ltx(seed: int) -> DiffusionPipeline:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    tok = t5_tokenizer()
    transformer = seeded(
        seed,
        lambda: LTXVideoTransformer3DModel(
            in_channels=8,
            out_channels=8,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=4,
            attention_head_dim=8,
            cross_attention_dim=32,
            num_layers=2,
            caption_channels=32,
        ),
    )

    def make_vae() -> Any:
        vae = AutoencoderKLLTXVideo(
            latent_channels=8,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            patch_size=4,
            patch_size_t=1,
            encoder_causal=True,
            decoder_causal=False,
        )
        vae.use_framewise_encoding = False
        vae.use_framewise_decoding = False
        return vae

    return LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=seeded(seed, make_vae),
        text_encoder=seeded(seed, lambda: t5_text(tok, 32)),
        tokenizer=tok,
        transformer=transformer,
    )
