"""Builders of the newer random-weight pipelines (`TinySpec.core=False`): Wan 2.2 with two experts, FLUX Kontext
with a reference image, LTX-2 (video + audio), and the pipelines with Qwen text encoders: Qwen-Image,
HunyuanVideo 1.5, FLUX.2 Klein. Same contract as `core`: configs only, random weights from a seed,
tokenizers made in memory; they reuse `core`'s and `encoders`' helpers."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DiffusionPipeline

from .core import build_flux, build_wan, seeded
from .encoders import (
    TEXT_LEN,
    decoder_sizes,
    gemma3_text,
    gemma_tokenizer,
    qwen25vl,
    qwen25vl_text_config,
    qwen_tokenizer,
)

#: Wan 2.2 A14B's switch: steps with ``t >= 0.875 * 1000`` run ``transformer`` (high noise), later ones
#: ``transformer_2``; with the tiny schedule (shift 5) a 2-step call runs each expert once
WAN22_BOUNDARY_RATIO = 0.875


#: side of the square FLUX Kontext reference image: 32 px -> 16x16 latent -> 8x8 reference tokens
KONTEXT_IMAGE_SIZE = 32


def build_wan22(seed: int) -> DiffusionPipeline:
    """Wan 2.2 A14B style: ``tiny-wan``'s components plus a second expert ``transformer_2`` (same config,
    its own weights) and a ``boundary_ratio`` that hands the low-noise steps to it."""
    from diffusers import WanPipeline, WanTransformer3DModel

    base = build_wan(seed)
    expert = seeded(seed + 1, lambda: WanTransformer3DModel.from_config(base.transformer.config))
    components = dict(base.components, transformer_2=expert)
    return WanPipeline(**components, boundary_ratio=WAN22_BOUNDARY_RATIO)


def build_flux_kontext(seed: int) -> DiffusionPipeline:
    """FLUX.1 Kontext: ``tiny-flux``'s components; the call's ``image`` is encoded and its packed tokens
    are appended to the target's (position ids with image index 1)."""
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline(**build_flux(seed).components)


def kontext_image(size: int = KONTEXT_IMAGE_SIZE) -> torch.Tensor:
    """A deterministic ``[1, 3, size, size]`` image in [0, 1] (smooth colour ramps, no RNG)."""
    ramp = torch.linspace(0.0, 1.0, size)
    y, x = torch.meshgrid(ramp, ramp, indexing="ij")
    return torch.stack([x, y, 0.5 + 0.5 * torch.sin(6.0 * (x + y))]).unsqueeze(0)


def kontext_call_kwargs(height: int, width: int) -> dict[str, Any]:
    """The reference ``image`` (fixed size, whatever the output size) and ``max_area = height * width``:
    Kontext rescales the output to ``max_area`` (default 1024**2) at the requested aspect ratio, so this
    keeps exactly ``height x width``."""
    return {"image": kontext_image(), "max_area": height * width}


def build_ltx2(seed: int) -> DiffusionPipeline:
    """LTX-2 (joint video + audio): Gemma3 text encoder, text connectors, video and audio VAEs, vocoder and
    the audio-video transformer, all tiny. The video VAE compresses 4x in space and time (patch 1): 9 frames
    of 32x32 px are 3x8x8 latent tokens."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    tok = gemma_tokenizer()
    text_hidden, text_layers = 16, 2
    text_encoder = seeded(seed, lambda: gemma3_text(tok, text_hidden))
    transformer = seeded(
        seed,
        lambda: LTX2VideoTransformer3DModel(
            in_channels=4,
            out_channels=4,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=2,
            attention_head_dim=8,
            cross_attention_dim=16,
            vae_scale_factors=(4, 4, 4),
            audio_in_channels=4,
            audio_out_channels=4,
            audio_num_attention_heads=2,
            audio_attention_head_dim=4,
            audio_cross_attention_dim=8,
            num_layers=2,
            qk_norm="rms_norm_across_heads",
            caption_channels=text_hidden,
            rope_double_precision=False,
            rope_type="split",
        ),
    )
    connectors = seeded(
        seed,
        lambda: LTX2TextConnectors(
            caption_channels=text_hidden,
            text_proj_in_factor=text_layers + 1,  # every hidden state of the text encoder, stacked
            video_connector_num_attention_heads=2,
            video_connector_attention_head_dim=8,
            video_connector_num_layers=1,
            video_connector_num_learnable_registers=None,
            audio_connector_num_attention_heads=2,
            audio_connector_attention_head_dim=8,
            audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=None,
            connector_rope_base_seq_len=32,
            rope_double_precision=False,
            rope_type="split",
        ),
    )

    def make_vae() -> Any:
        vae = AutoencoderKLLTX2Video(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            layers_per_block=(1, 1, 1),
            decoder_layers_per_block=(1, 1, 1),
            spatio_temporal_scaling=(True, True),
            decoder_spatio_temporal_scaling=(True, True),
            decoder_inject_noise=(False, False, False),
            downsample_type=("spatiotemporal", "spatiotemporal"),
            upsample_type=("spatiotemporal", "spatiotemporal"),
            upsample_residual=(False, False),
            upsample_factor=(1, 1),
            timestep_conditioning=False,
            patch_size=1,
            patch_size_t=1,
            encoder_causal=True,
            decoder_causal=False,
        )
        vae.use_framewise_encoding = False
        vae.use_framewise_decoding = False
        return vae

    audio_vae = seeded(
        seed,
        lambda: AutoencoderKLLTX2Audio(
            base_channels=4,
            output_channels=2,
            ch_mult=(1,),
            num_res_blocks=1,
            attn_resolutions=None,
            in_channels=2,
            resolution=32,
            latent_channels=2,
            norm_type="pixel",
            causality_axis="height",
            dropout=0.0,
            mid_block_add_attention=False,
            sample_rate=16000,
            mel_hop_length=160,
            is_causal=True,
            mel_bins=8,
        ),
    )
    vocoder = seeded(
        seed,
        lambda: LTX2Vocoder(
            in_channels=audio_vae.config.output_channels * audio_vae.config.mel_bins,
            hidden_channels=16,
            out_channels=2,
            upsample_kernel_sizes=[4, 4],
            upsample_factors=[2, 2],
            resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3, 5]],
            leaky_relu_negative_slope=0.1,
            output_sampling_rate=16000,
        ),
    )
    return LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=seeded(seed, make_vae),
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    )


def _qwen_image_parts(seed: int, pipe_cls: Any, templates: tuple[str, ...], **extra: Any) -> DiffusionPipeline:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    tok = qwen_tokenizer(templates)
    z_dim = 4
    transformer = seeded(
        seed,
        lambda: QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=4 * z_dim,  # 2x2 packing
            out_channels=z_dim,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            guidance_embeds=False,
            axes_dims_rope=(8, 4, 4),
        ),
    )
    vae = seeded(
        seed,
        lambda: AutoencoderKLQwenImage(
            base_dim=4,
            z_dim=z_dim,
            dim_mult=[1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True],  # two downsamples: spatial factor 4
            latents_mean=[0.0] * z_dim,
            latents_std=[1.0] * z_dim,
        ),
    )
    return pipe_cls(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=seeded(seed, lambda: qwen25vl(tok, 16)),
        tokenizer=tok,
        **extra,
    )


def build_qwenimage(seed: int) -> DiffusionPipeline:
    """QwenImagePipeline: Qwen2.5-VL text encoder, 2x2-packed latents at 1/8 of the image size."""
    from diffusers import QwenImagePipeline

    return _qwen_image_parts(seed, QwenImagePipeline, (_QWENIMAGE_TEMPLATE,))


_QWENIMAGE_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)


# HunyuanVideo 1.5's system message, verbatim (its line continuations keep the indentation spaces).
_HUNYUANVIDEO15_SYSTEM = "You are a helpful assistant. Describe the video by detailing the following aspects: \
        1. The main content and theme of the video. \
        2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects. \
        3. Actions, events, behaviors temporal relationships, physical movement changes of the objects. \
        4. background environment, light, style and atmosphere. \
        5. camera angles, movements, and transitions used in the video."


def build_hunyuanvideo15(seed: int) -> DiffusionPipeline:
    """HunyuanVideo15Pipeline: Qwen2.5-VL text model + ByT5 glyph encoder, CFG through its guider.

    The pipeline's fixed text lengths (1000 Qwen tokens, 256 ByT5 tokens, 729 vision tokens, all padded and
    masked in the joint attention) are instance attributes; they are shrunk to tiny sizes here.
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    tok, tok2 = qwen_tokenizer((_HUNYUANVIDEO15_SYSTEM,)), ByT5Tokenizer()
    transformer = seeded(
        seed,
        lambda: HunyuanVideo15Transformer3DModel(
            in_channels=9,  # latents (4) + image-condition latents (4) + condition mask (1)
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=2,
            num_refiner_layers=1,
            mlp_ratio=2.0,
            patch_size=1,
            patch_size_t=1,
            text_embed_dim=16,
            text_embed_2_dim=16,
            image_embed_dim=12,
            rope_axes_dim=(2, 2, 4),
            target_size=16,
            task_type="t2v",
        ),
    )
    vae = seeded(
        seed,
        lambda: AutoencoderKLHunyuanVideo15(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 8),
            layers_per_block=1,
            spatial_compression_ratio=4,
            temporal_compression_ratio=2,
            downsample_match_channel=False,
            upsample_match_channel=False,
        ),
    )
    byt5 = T5Config(
        vocab_size=len(tok2),
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=tok2.pad_token_id,
        eos_token_id=tok2.eos_token_id,
        decoder_start_token_id=tok2.pad_token_id,
    )
    pipe = HunyuanVideo15Pipeline(
        text_encoder=seeded(seed, lambda: Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(**qwen25vl_text_config(tok, 16)))),
        tokenizer=tok,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=seeded(seed, lambda: T5EncoderModel(byt5)),
        tokenizer_2=tok2,
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    pipe.tokenizer_max_length = TEXT_LEN
    pipe.tokenizer_2_max_length = TEXT_LEN
    pipe.vision_num_semantic_tokens = 8
    return pipe


def build_flux2_klein(seed: int) -> DiffusionPipeline:
    """Flux2KleinPipeline (Qwen3 text encoder, real CFG); Flux2Pipeline needs a Mistral-3 processor instead."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = qwen_tokenizer(("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",))
    hidden = 16
    text_config = Qwen3Config(
        **decoder_sizes(tok, hidden),
        num_key_value_heads=2,
        head_dim=8,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
    )
    latent = 4
    transformer = seeded(
        seed,
        lambda: Flux2Transformer2DModel(
            patch_size=1,
            in_channels=4 * latent,  # 2x2 patchified latents
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=2 * hidden,  # text_encoder_out_layers=(1, 2) stacked
            timestep_guidance_channels=256,
            axes_dims_rope=(4, 4, 4, 4),
            guidance_embeds=False,
        ),
    )
    vae = seeded(
        seed,
        lambda: AutoencoderKLFlux2(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 8),
            layers_per_block=1,
            latent_channels=latent,
            norm_num_groups=4,
            sample_size=32,
            use_quant_conv=False,
            use_post_quant_conv=False,
            mid_block_add_attention=False,
        ),
    )
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=seeded(seed, lambda: Qwen3ForCausalLM(text_config)),
        tokenizer=tok,
        transformer=transformer,
    )
