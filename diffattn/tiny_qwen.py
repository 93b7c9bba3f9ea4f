"""Tiny, offline pipelines whose text encoders are Qwen models: Qwen-Image (and Edit), HunyuanVideo 1.5, FLUX.2 Klein.

Like `diffattn.tiny`: configs only, random weights from a seed, tokenizers built in memory (no files, no network).
The Qwen tokenizer is a byte-level BPE whose merges are generated from the pipelines' own prompt templates, so a
template tokenizes to about as many tokens as with the real vocabulary (the Qwen-Image system prefix is exactly the
34 tokens the pipeline crops); any other text falls back to single bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from diffusers import DiffusionPipeline

from .tiny import _TEXT_LEN, _byte_alphabet, _decoder_sizes, _seeded

__all__ = ["build_flux2_klein", "build_hunyuanvideo15", "build_qwenimage", "qwen_tokenizer"]

_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
)

# The Qwen2/Qwen3 chat format, enough for HunyuanVideo 1.5 (system + user) and FLUX.2 Klein (user, thinking off).
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def qwen_tokenizer(texts: Iterable[str] = ()) -> Any:
    """Byte-level Qwen2 BPE tokenizer with the Qwen special tokens and chat template, built in memory.

    Every pre-tokenized piece of ``texts`` (special tokens excluded) becomes one token through a chain of
    left-to-right merges; other text is encoded byte by byte. Pads with ``<|endoftext|>`` on the right.
    """
    from transformers import Qwen2Tokenizer

    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    pre = Qwen2Tokenizer(vocab=dict(vocab), merges=[]).backend_tokenizer.pre_tokenizer
    merges: list[tuple[str, str]] = []
    special = re.compile("|".join(map(re.escape, _SPECIAL)))
    for text in texts:
        for chunk in special.split(text):
            for piece, _ in pre.pre_tokenize_str(chunk):
                acc = piece[0]
                for ch in piece[1:]:
                    if acc + ch not in vocab:
                        merges.append((acc, ch))
                        vocab[acc + ch] = len(vocab)
                    acc += ch
    for tok in _SPECIAL:
        vocab[tok] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, extra_special_tokens=list(_SPECIAL[1:]))
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def _qwen25vl_text_config(tok: Any, hidden: int) -> dict[str, Any]:
    return {
        "vocab_size": len(tok),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": None,
        "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
    }


def _qwen25vl(tok: Any, hidden: int) -> Any:
    """Tiny Qwen2_5_VLForConditionalGeneration (2 text layers, 2-layer vision tower)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tok.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=_qwen25vl_text_config(tok, hidden),
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        vocab_size=len(tok),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def _qwen_image_parts(seed: int, pipe_cls: Any, templates: tuple[str, ...], **extra: Any) -> DiffusionPipeline:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    tok = qwen_tokenizer(templates)
    z_dim = 4
    transformer = _seeded(
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
    vae = _seeded(
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
        text_encoder=_seeded(seed, lambda: _qwen25vl(tok, 16)),
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
    transformer = _seeded(
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
    vae = _seeded(
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
        text_encoder=_seeded(seed, lambda: Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(**_qwen25vl_text_config(tok, 16)))),
        tokenizer=tok,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=_seeded(seed, lambda: T5EncoderModel(byt5)),
        tokenizer_2=tok2,
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    pipe.tokenizer_max_length = _TEXT_LEN
    pipe.tokenizer_2_max_length = _TEXT_LEN
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
        **_decoder_sizes(tok, hidden),
        num_key_value_heads=2,
        head_dim=8,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
    )
    latent = 4
    transformer = _seeded(
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
    vae = _seeded(
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
        text_encoder=_seeded(seed, lambda: Qwen3ForCausalLM(text_config)),
        tokenizer=tok,
        transformer=transformer,
    )
