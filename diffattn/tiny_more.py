"""Tiny offline builders of the newer families (`TinySpec.core=False` in `diffattn.tiny.TINY_SPECS`):
Wan 2.2 with two experts, FLUX Kontext with a reference image, LTX-2 (video + audio).

Same contract as `diffattn.tiny`: configs only, tokenizers made in memory, random weights from a seed,
a two-step call well under a few seconds on a CPU, and a denoiser grid large enough that sparse
attention differs from dense. The helpers of `diffattn.tiny` are reused, not copied.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DiffusionPipeline

from .tiny import _TEXT_LEN, _build_flux, _build_wan, _decoder_sizes, _seeded

#: Wan 2.2 A14B's switch: steps with ``t >= 0.875 * 1000`` run ``transformer`` (high noise), later ones
#: ``transformer_2``; with the tiny schedule (shift 5) a 2-step call runs each expert once
WAN22_BOUNDARY_RATIO = 0.875
#: side of the square FLUX Kontext reference image: 32 px -> 16x16 latent -> 8x8 reference tokens
KONTEXT_IMAGE_SIZE = 32


def _build_wan22(seed: int) -> DiffusionPipeline:
    """Wan 2.2 A14B style: ``tiny-wan``'s components plus a second expert ``transformer_2`` (same config,
    its own weights) and a ``boundary_ratio`` that hands the low-noise steps to it."""
    from diffusers import WanPipeline, WanTransformer3DModel

    base = _build_wan(seed)
    expert = _seeded(seed + 1, lambda: WanTransformer3DModel.from_config(base.transformer.config))
    components = dict(base.components, transformer_2=expert)
    return WanPipeline(**components, boundary_ratio=WAN22_BOUNDARY_RATIO)


def _build_flux_kontext(seed: int) -> DiffusionPipeline:
    """FLUX.1 Kontext: ``tiny-flux``'s components; the call's ``image`` is encoded and its packed tokens
    are appended to the target's (position ids with image index 1)."""
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline(**_build_flux(seed).components)


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


# --------------------------------------------------------------------------- LTX-2


def _gemma_tokenizer(max_length: int = _TEXT_LEN) -> Any:
    """Character-level Gemma BPE tokenizer with byte fallback, BOS, made in memory; left padding like
    the real one (the pipeline sets it anyway)."""
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {}
    for tok in ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "▁"]:
        vocab[tok] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in map(chr, range(33, 127)):
        vocab[c] = len(vocab)
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=max_length, add_bos_token=True)


def _gemma3_text(tok: Any, hidden: int) -> Any:
    """Tiny Gemma3ForConditionalGeneration: two text layers and a one-layer 8x8-pixel SigLIP tower
    (LTX-2 only reads the text hidden states, but the pipeline types the full model)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        **_decoder_sizes(tok, hidden),
        num_key_value_heads=1,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=8,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    vision = SiglipVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=8, patch_size=4
    )
    return Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))


def _build_ltx2(seed: int) -> DiffusionPipeline:
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

    tok = _gemma_tokenizer()
    text_hidden, text_layers = 16, 2
    text_encoder = _seeded(seed, lambda: _gemma3_text(tok, text_hidden))
    transformer = _seeded(
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
    connectors = _seeded(
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

    audio_vae = _seeded(
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
    vocoder = _seeded(
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
        vae=_seeded(seed, make_vae),
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    )
