"""Tiny, offline diffusers pipelines with random weights for tests, benchmarks and the CLI.

Every pipeline is built from configs only (no files, no network): tokenizers are created
in memory and all models are randomly initialised with a fixed seed.  The models are small
enough that a two-step call takes well under a second on a laptop CPU, while the denoiser
still sees a non-trivial token grid (>= 8x8 image tokens for image families, >= 3 latent
frames of >= 6x6 tokens for video families) so sparse attention differs from dense.

Each family is one `TinySpec` in `TINY_SPECS`: its builder, default size, size multiple and the
pipeline keyword arguments it needs.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch
from diffusers import DiffusionPipeline

__all__ = [
    "CORE_TINY_MODELS",
    "TINY_MODELS",
    "TINY_SPECS",
    "TinySpec",
    "build_tiny_pipeline",
    "tiny_call_kwargs",
    "tiny_output",
]

_PROMPT = "a red fox"
_TEXT_LEN = 16  # text tokens (CLIP model_max_length / max_sequence_length)


# --------------------------------------------------------------------------- tokenizers


def _byte_alphabet() -> list[str]:
    """GPT-2 style printable stand-ins for the 256 byte values."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _clip_tokenizer(max_length: int = _TEXT_LEN) -> Any:
    """Byte-level CLIP BPE tokenizer without merges (one token per character)."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": i + len(alphabet) for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _t5_tokenizer() -> Any:
    """Unigram T5 tokenizer over lowercase letters, digits and a little punctuation."""
    from transformers import T5Tokenizer

    chars = "▁abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -2.0) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=_TEXT_LEN)


def _llama_tokenizer() -> Any:
    """Character-level Llama BPE tokenizer with byte fallback, BOS and right padding."""
    from transformers import LlamaTokenizerFast

    vocab: dict[str, int] = {}
    for tok in ["<unk>", "<s>", "</s>", "<pad>", "▁"]:
        vocab[tok] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in map(chr, range(33, 127)):
        vocab[c] = len(vocab)
    # Right padding + BOS like the real HunyuanVideo (Llama-3) tokenizer: the transformer assumes the valid
    # text tokens come first when it builds its key-padding mask.
    return LlamaTokenizerFast(vocab=vocab, merges=[], pad_token="<pad>", padding_side="right", add_bos_token=True)


# --------------------------------------------------------------------------- text encoders


def _clip_text(tok: Any, hidden: int, *, projection: int | None = None, positions: int = _TEXT_LEN) -> Any:
    """Tiny CLIPTextModel (or CLIPTextModelWithProjection if ``projection`` is given)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=positions,
        projection_dim=projection or hidden,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        hidden_act="gelu",
    )
    cls = CLIPTextModelWithProjection if projection is not None else CLIPTextModel
    return cls(config)


def _t5_text(tok: Any, d_model: int, *, umt5: bool = False) -> Any:
    """Tiny T5EncoderModel (or UMT5EncoderModel)."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kwargs = dict(
        vocab_size=len(tok),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=1,
        num_heads=d_model // 8,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kwargs))
    return T5EncoderModel(T5Config(**kwargs))


def _decoder_sizes(tok: Any, hidden: int, **overrides: Any) -> dict[str, Any]:
    """The sizes every tiny decoder-style text encoder shares (Llama, Gemma 3, Qwen 3): two layers, two heads."""
    sizes = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                 num_attention_heads=2, max_position_embeddings=64)
    return {**sizes, **overrides}


def _llama_text(tok: Any, hidden: int) -> Any:
    """Tiny LlamaModel (two layers)."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        **_decoder_sizes(tok, hidden),
        num_key_value_heads=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaModel(config)


def _vae_kl(latent_channels: int = 4, **extra: Any) -> Any:
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


# --------------------------------------------------------------------------- builders


def _seeded(seed: int, fn: Callable[[], Any]) -> Any:
    torch.manual_seed(seed)
    return fn()


def _build_sd(seed: int) -> DiffusionPipeline:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tok = _clip_tokenizer()
    unet = _seeded(
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
        vae=_seeded(seed, lambda: _vae_kl(scaling_factor=0.18215)),
        text_encoder=_seeded(seed, lambda: _clip_text(tok, 32)),
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


def _build_sdxl(seed: int) -> DiffusionPipeline:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tok, tok2 = _clip_tokenizer(), _clip_tokenizer()
    time_dim, proj_dim = 8, 16
    unet = _seeded(
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
        vae=_seeded(seed, lambda: _vae_kl(scaling_factor=0.13025)),
        text_encoder=_seeded(seed, lambda: _clip_text(tok, 32)),
        text_encoder_2=_seeded(seed + 1, lambda: _clip_text(tok2, 32, projection=proj_dim)),
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


def _build_pixart(seed: int, sigma: bool) -> DiffusionPipeline:
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )

    tok = _t5_tokenizer()
    transformer = _seeded(
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
        text_encoder=_seeded(seed, lambda: _t5_text(tok, 32)),
        vae=_seeded(seed, lambda: _vae_kl(scaling_factor=0.18215)),
        transformer=transformer,
        scheduler=scheduler,
    )


def _build_sd3(seed: int) -> DiffusionPipeline:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, tok2, tok3 = _clip_tokenizer(), _clip_tokenizer(), _t5_tokenizer()
    transformer = _seeded(
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
        vae=_seeded(seed, lambda: _vae_kl(scaling_factor=1.5305, shift_factor=0.0609)),
        text_encoder=_seeded(seed, lambda: _clip_text(tok, 16, projection=16)),
        tokenizer=tok,
        text_encoder_2=_seeded(seed + 1, lambda: _clip_text(tok2, 16, projection=16)),
        tokenizer_2=tok2,
        text_encoder_3=_seeded(seed, lambda: _t5_text(tok3, 32)),
        tokenizer_3=tok3,
    )


def _build_flux(seed: int) -> DiffusionPipeline:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok, tok2 = _clip_tokenizer(), _t5_tokenizer()
    transformer = _seeded(
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
        vae=_seeded(seed, lambda: _vae_kl(scaling_factor=0.3611, shift_factor=0.1159)),
        text_encoder=_seeded(seed, lambda: _clip_text(tok, 32)),
        tokenizer=tok,
        text_encoder_2=_seeded(seed, lambda: _t5_text(tok2, 32)),
        tokenizer_2=tok2,
        transformer=transformer,
    )


def _build_cogvideox(seed: int) -> DiffusionPipeline:
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    tok = _t5_tokenizer()
    transformer = _seeded(
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
            max_text_seq_length=_TEXT_LEN,
        ),
    )
    vae = _seeded(
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
        text_encoder=_seeded(seed, lambda: _t5_text(tok, 32)),
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


def _build_wan(seed: int) -> DiffusionPipeline:
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    tok = _t5_tokenizer()
    vae = _seeded(
        seed,
        lambda: AutoencoderKLWan(
            base_dim=4,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        ),
    )
    transformer = _seeded(
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
        text_encoder=_seeded(seed, lambda: _t5_text(tok, 32, umt5=True)),
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )


def _build_hunyuanvideo(seed: int) -> DiffusionPipeline:
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    tok, tok2 = _llama_tokenizer(), _clip_tokenizer(77)
    transformer = _seeded(
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
    vae = _seeded(
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
        text_encoder=_seeded(seed, lambda: _llama_text(tok, 16)),
        tokenizer=tok,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=_seeded(seed, lambda: _clip_text(tok2, 8, positions=77)),
        tokenizer_2=tok2,
    )


def _build_ltx(seed: int) -> DiffusionPipeline:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    tok = _t5_tokenizer()
    transformer = _seeded(
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
        vae=_seeded(seed, make_vae),
        text_encoder=_seeded(seed, lambda: _t5_text(tok, 32)),
        tokenizer=tok,
        transformer=transformer,
    )


@dataclasses.dataclass(frozen=True)
class TinySpec:
    """One tiny family.

    name: ``"tiny-<family>"``.
    build: ``seed -> pipeline`` (random weights from the seed).
    height, width: default image size; ``frames``: number of frames for video families, else None.
    multiple: height and width must be multiples of this (VAE factor x patch size / UNet depth).
    call_kwargs: the family's own ``pipe(**kw)`` arguments (guidance, text length, ...).
    core: one of the ten original families that the family-parametrized test fixtures run over; the newer
    families (``core=False``) are exercised end to end by their own tests, to keep the suite's time bounded.
    sized_kwargs: ``(height, width) -> kwargs`` made fresh for every call at that output size (an input
    image, an area the pipeline rescales to), or None.
    """

    name: str
    build: Callable[[int], DiffusionPipeline]
    height: int
    width: int
    frames: int | None
    multiple: int
    call_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    core: bool = True
    sized_kwargs: Callable[[int, int], Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "call_kwargs", MappingProxyType(dict(self.call_kwargs)))


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """Function ``name`` of ``diffattn.<module>``, imported when called (those modules import this one's helpers)."""

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(f"diffattn.{module}"), name)(*args)

    call.__name__ = call.__qualname__ = name
    return call


_TEXT = {"max_sequence_length": _TEXT_LEN}
_LTX2 = {
    "guidance_scale": 3.0,
    "negative_prompt": "",
    "stg_scale": 0.0,
    "audio_stg_scale": 0.0,
    "modality_scale": 1.0,
    "audio_modality_scale": 1.0,
    **_TEXT,
}
_PIXART = {"guidance_scale": 5.0, "use_resolution_binning": False, "clean_caption": False, **_TEXT}

TINY_SPECS: dict[str, TinySpec] = {
    spec.name: spec
    for spec in (
        # latent 16x16; UNet attention at 16x16 and 8x8
        TinySpec("tiny-sd", _build_sd, 32, 32, None, 8, {"guidance_scale": 5.0}),
        # latent 32x48; UNet attention at 16x24 and 8x12
        TinySpec("tiny-sdxl", _build_sdxl, 64, 96, None, 8, {"guidance_scale": 5.0}),
        # latent 16x16, patch 2 -> 8x8 tokens
        TinySpec("tiny-pixart-alpha", lambda seed: _build_pixart(seed, sigma=False), 32, 32, None, 8, _PIXART),
        # latent 24x16, patch 2 -> 12x8 tokens
        TinySpec("tiny-pixart-sigma", lambda seed: _build_pixart(seed, sigma=True), 48, 32, None, 8, _PIXART),
        # latent 16x24, patch 2 -> 8x12 tokens
        TinySpec("tiny-sd3", _build_sd3, 32, 48, None, 4, {"guidance_scale": 5.0, **_TEXT}),
        # latent 16x24, 2x2 packing -> 8x12 tokens; distilled guidance embedding (no CFG batch)
        TinySpec("tiny-flux", _build_flux, 32, 48, None, 4, {"guidance_scale": 3.5, **_TEXT}),
        # latent 3x12x12, patch 2 -> 3x6x6 tokens
        TinySpec("tiny-cogvideox", _build_cogvideox, 96, 96, 9, 16, {"guidance_scale": 6.0, **_TEXT}),
        # latent 3x12x16, patch (1,2,2) -> 3x6x8 tokens
        TinySpec("tiny-wan", _build_wan, 96, 128, 9, 16, {"guidance_scale": 5.0, "negative_prompt": "", **_TEXT}),
        # latent 3x8x8, patch 1 -> 3x8x8 tokens; distilled guidance embedding (no CFG batch)
        TinySpec(
            "tiny-hunyuanvideo",
            _build_hunyuanvideo,
            64,
            64,
            9,
            16,
            {"guidance_scale": 6.0, "prompt_template": {"template": "{}", "crop_start": 0}, **_TEXT},
        ),
        # latent 3x6x8 (VAE /16 spatial, /4 temporal), patch 1
        TinySpec("tiny-ltx", _build_ltx, 96, 128, 9, 32, {"guidance_scale": 3.0, "negative_prompt": "", **_TEXT}),
        # --- newer families (core=False), with their own end-to-end tests
        # Qwen text encoders (diffattn.tiny_qwen).
        # latent 16x20 (VAE /4), 2x2 packing -> 8x10 tokens; true CFG: separate cond / uncond calls
        TinySpec(
            "tiny-qwenimage",
            _lazy("tiny_qwen", "build_qwenimage"),
            64,
            80,
            None,
            8,
            {"true_cfg_scale": 4.0, "negative_prompt": " ", **_TEXT},
            core=False,
        ),
        # latent 3x6x8 (VAE /4 spatial, /2 temporal: 5 frames), patch 1; CFG through the pipeline's guider
        TinySpec("tiny-hunyuanvideo15", _lazy("tiny_qwen", "build_hunyuanvideo15"), 24, 32, 5, 4, core=False),
        # Flux2KleinPipeline: latent 16x20 (VAE /2), 2x2 patchified -> 8x10 tokens; real CFG (not distilled)
        TinySpec(
            "tiny-flux2",
            _lazy("tiny_qwen", "build_flux2_klein"),
            32,
            40,
            None,
            4,
            {"guidance_scale": 4.0, "text_encoder_out_layers": (1, 2), **_TEXT},
            core=False,
        ),
        # tiny-wan's latent grid 3x6x8 tokens; two experts: step 0 runs transformer, step 1 transformer_2
        TinySpec(
            "tiny-wan22",
            _lazy("tiny_more", "_build_wan22"),
            96,
            128,
            9,
            16,
            {"guidance_scale": 5.0, "negative_prompt": "", **_TEXT},
            core=False,
        ),
        # target 8x12 tokens (as tiny-flux) + 8x8 reference-image tokens appended to the latent stream
        TinySpec(
            "tiny-flux-kontext",
            _lazy("tiny_more", "_build_flux_kontext"),
            32,
            48,
            None,
            4,
            {"guidance_scale": 3.5, "_auto_resize": False, **_TEXT},
            core=False,
            sized_kwargs=_lazy("tiny_more", "kontext_call_kwargs"),
        ),
        # latent 3x8x8 (video VAE /4 in space and time), patch 1; the audio stream stays dense. Guidance is CFG
        # alone: STG and modality isolation would add two more transformer passes per step
        TinySpec("tiny-ltx2", _lazy("tiny_more", "_build_ltx2"), 32, 32, 9, 32, _LTX2, core=False),
    )
}
TINY_MODELS: tuple[str, ...] = tuple(TINY_SPECS)
CORE_TINY_MODELS: tuple[str, ...] = tuple(name for name, spec in TINY_SPECS.items() if spec.core)


def _spec(name: str) -> TinySpec:
    if name not in TINY_SPECS:
        raise ValueError(f"Unknown tiny model {name!r}; expected one of: {', '.join(TINY_MODELS)}")
    return TINY_SPECS[name]


# --------------------------------------------------------------------------- public API


def build_tiny_pipeline(name: str, *, seed: int = 0) -> DiffusionPipeline:
    """Build the tiny pipeline ``name`` (one of ``TINY_MODELS``): fp32, CPU, eval mode, random weights.

    Weights depend only on ``seed``; the global torch RNG state is restored afterwards.
    """
    spec = _spec(name)
    with torch.random.fork_rng(devices=[]):
        pipe = spec.build(seed)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def tiny_call_kwargs(
    name: str, *, seed: int = 0, height: int | None = None, width: int | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``pipe(**kw)``: 2 steps, default size, fresh CPU generator, ``output_type="pt"``.

    ``height``/``width`` override the family default and must be multiples of the family's
    ``TinySpec.multiple`` (4 to 32); video families use ``TinySpec.frames`` frames (3 latent frames).
    """
    spec = _spec(name)
    height = height or spec.height
    width = width or spec.width
    if height % spec.multiple or width % spec.multiple:
        raise ValueError(f"{name}: height and width must be multiples of {spec.multiple}, got {height}x{width}")
    kw: dict[str, Any] = {
        "prompt": _PROMPT,
        "num_inference_steps": 2,
        "height": height,
        "width": width,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "pt",
    }
    if spec.frames is not None:
        kw["num_frames"] = spec.frames
    kw.update(copy.deepcopy(dict(spec.call_kwargs)))  # fresh nested dicts: a pipeline may mutate them
    if spec.sized_kwargs is not None:
        kw.update(spec.sized_kwargs(height, width))
    return kw


def tiny_output(pipe: DiffusionPipeline, name: str, **overrides: Any) -> torch.Tensor:
    """Run ``pipe`` with ``tiny_call_kwargs(name)`` updated by ``overrides``; return images/frames as float.

    Image families give ``[B, C, H, W]``, video families ``[B, F, C, H, W]``.
    """
    size = {k: overrides.pop(k) for k in ("seed", "height", "width") if k in overrides}
    kw = tiny_call_kwargs(name, **size)
    kw.update(overrides)
    kw["return_dict"] = False
    out = pipe(**kw)[0]
    if not isinstance(out, torch.Tensor):
        import numpy as np

        out = torch.from_numpy(np.asarray(out))
    return out.float()
