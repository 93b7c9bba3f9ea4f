"""Tiny random configs and inputs for every diffusers denoiser class diffattn is tested on.

``TINY[class_name] = (config, inputs)``: the config builds the model with random weights in well under
a second; ``inputs`` are the forward's keyword arguments, where ``R(shape)`` is a seeded random normal
tensor and ``T(values, dtype)`` a literal (position ids, timesteps, masks). Sizes follow the smallest
configs diffusers' own model tests use (diffusers 0.42.1), with position ids forming real grids.
`build_tiny_model` makes ``(model, inputs)``; `tiny_forward` runs it and returns the main output.
"""

# ruff: noqa: E501  (a data table)

from __future__ import annotations

import dataclasses
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class R:
    """A random normal tensor of ``shape`` (drawn from the builder's seeded generator)."""

    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class T:
    """A literal tensor."""

    values: Any
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class I:  # noqa: E742
    """A random integer tensor in ``[0, high)``."""

    shape: tuple[int, ...]
    high: int
    dtype: str = "int64"


@dataclasses.dataclass(frozen=True)
class M:
    """Position ids ``[H*W, width]`` of a row-major grid: ``(0, row, col)`` per token (FLUX style)."""

    grid: tuple[int, int]
    width: int = 3


TINY: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    'AceStepTransformer1DModel': (
        {'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 2, 'num_attention_heads': 4, 'num_key_value_heads': 2, 'head_dim': 8, 'in_channels': 24, 'audio_acoustic_hidden_dim': 8, 'patch_size': 2, 'rope_theta': 10000.0, 'rms_norm_eps': 1e-06, 'sliding_window': 16},
        {'hidden_states': R((2, 8, 8)), 'timestep': R((2,)), 'timestep_r': R((2,)), 'encoder_hidden_states': R((2, 10, 32)), 'context_latents': R((2, 8, 16))},
    ),
    'AllegroTransformer3DModel': (
        {'num_attention_heads': 2, 'attention_head_dim': 8, 'in_channels': 4, 'out_channels': 4, 'num_layers': 1, 'cross_attention_dim': 16, 'sample_width': 8, 'sample_height': 8, 'sample_frames': 8, 'caption_channels': 8},
        {'hidden_states': R((2, 4, 2, 8, 8)), 'encoder_hidden_states': R((2, 16, 8)), 'timestep': T([44, 239], 'int64')},
    ),
    'AnyFlowFARTransformer3DModel': (
        {'patch_size': (1, 2, 2), 'compressed_patch_size': (1, 4, 4), 'full_chunk_limit': 3, 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'rope_max_seq_len': 32, 'gate_value': 0.25, 'deltatime_type': 'r'},
        {'hidden_states': R((1, 4, 4, 16, 16)), 'timestep': T([[500.0, 500.0, 500.0, 500.0]], 'float32'), 'r_timestep': T([[250.0, 250.0, 250.0, 250.0]], 'float32'), 'encoder_hidden_states': R((1, 12, 16)), 'chunk_partition': [2, 2]},
    ),
    'AnyFlowTransformer3DModel': (
        {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'rope_max_seq_len': 32, 'gate_value': 0.25, 'deltatime_type': 'r'},
        {'hidden_states': R((1, 2, 4, 16, 16)), 'timestep': T([[500.0, 500.0]], 'float32'), 'r_timestep': T([[250.0, 250.0]], 'float32'), 'encoder_hidden_states': R((1, 12, 16))},
    ),
    'AuraFlowTransformer2DModel': (
        {'sample_size': 32, 'patch_size': 2, 'in_channels': 4, 'num_mmdit_layers': 1, 'num_single_dit_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 4, 'caption_projection_dim': 32, 'joint_attention_dim': 32, 'out_channels': 4, 'pos_embed_max_size': 256},
        {'hidden_states': R((2, 4, 32, 32)), 'encoder_hidden_states': R((2, 256, 32)), 'timestep': T([44, 239], 'int64')},
    ),
    'BriaFiboTransformer2DModel': (
        {'patch_size': 1, 'in_channels': 48, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 2, 'joint_attention_dim': 64, 'text_encoder_dim': 32, 'pooled_projection_dim': None, 'axes_dims_rope': [0, 4, 4]},
        {'hidden_states': R((1, 256, 48)), 'encoder_hidden_states': R((1, 32, 64)), 'img_ids': M((16, 16)), 'txt_ids': R((32, 3)), 'timestep': T([1.0], 'float32'), 'text_encoder_layers': [R((1, 32, 32)), R((1, 32, 32))]},
    ),
    'BriaTransformer2DModel': (
        {'patch_size': 1, 'in_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'pooled_projection_dim': None, 'axes_dims_rope': [0, 4, 4]},
        {'hidden_states': R((1, 16, 4)), 'encoder_hidden_states': R((1, 48, 32)), 'img_ids': M((4, 4)), 'txt_ids': R((48, 3)), 'timestep': T([1.0], 'float32')},
    ),
    'ChromaTransformer2DModel': (
        {'patch_size': 1, 'in_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'axes_dims_rope': [4, 4, 8], 'approximator_num_channels': 8, 'approximator_hidden_dim': 16, 'approximator_layers': 1},
        {'hidden_states': R((1, 16, 4)), 'encoder_hidden_states': R((1, 48, 32)), 'img_ids': M((4, 4)), 'txt_ids': R((48, 3)), 'timestep': T([1.0], 'float32')},
    ),
    'ChronoEditTransformer3DModel': (
        {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 8, 'in_channels': 16, 'out_channels': 16, 'text_dim': 32, 'freq_dim': 16, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'eps': 1e-06, 'image_dim': None, 'added_kv_proj_dim': None, 'rope_max_seq_len': 64, 'pos_embed_seq_len': None, 'rope_temporal_skip_len': 8},
        {'hidden_states': R((1, 16, 2, 8, 8)), 'timestep': T([44], 'int64'), 'encoder_hidden_states': R((1, 12, 32)), 'encoder_hidden_states_image': None},
    ),
    'CogVideoXTransformer3DModel': (
        {'num_attention_heads': 2, 'attention_head_dim': 8, 'in_channels': 4, 'out_channels': 4, 'time_embed_dim': 2, 'text_embed_dim': 8, 'num_layers': 2, 'sample_width': 8, 'sample_height': 8, 'sample_frames': 8, 'patch_size': 2, 'patch_size_t': None, 'temporal_compression_ratio': 4, 'max_text_seq_length': 8},
        {'hidden_states': R((2, 1, 4, 8, 8)), 'encoder_hidden_states': R((2, 8, 8)), 'timestep': T([44, 239], 'int64')},
    ),
    'CogView3PlusTransformer2DModel': (
        {'patch_size': 2, 'in_channels': 4, 'num_layers': 2, 'attention_head_dim': 4, 'num_attention_heads': 2, 'out_channels': 4, 'text_embed_dim': 8, 'time_embed_dim': 8, 'condition_dim': 2, 'pos_embed_max_size': 8, 'sample_size': 8},
        {'hidden_states': R((2, 4, 8, 8)), 'encoder_hidden_states': R((2, 8, 8)), 'original_size': T([[64, 64], [64, 64]], 'int64'), 'target_size': T([[64, 64], [64, 64]], 'int64'), 'crop_coords': T([[0, 0], [0, 0]], 'int64'), 'timestep': T([44, 239], 'int64')},
    ),
    'CogView4Transformer2DModel': (
        {'patch_size': 2, 'in_channels': 4, 'num_layers': 2, 'attention_head_dim': 4, 'num_attention_heads': 4, 'out_channels': 4, 'text_embed_dim': 8, 'time_embed_dim': 8, 'condition_dim': 4},
        {'hidden_states': R((2, 4, 8, 8)), 'encoder_hidden_states': R((2, 8, 8)), 'timestep': T([44, 239], 'int64'), 'original_size': T([[64, 64], [64, 64]], 'int64'), 'target_size': T([[64, 64], [64, 64]], 'int64'), 'crop_coords': T([[0, 0], [0, 0]], 'int64')},
    ),
    'ConsisIDTransformer3DModel': (
        {'num_attention_heads': 2, 'attention_head_dim': 8, 'in_channels': 4, 'out_channels': 4, 'time_embed_dim': 2, 'text_embed_dim': 8, 'num_layers': 1, 'sample_width': 8, 'sample_height': 8, 'sample_frames': 8, 'patch_size': 2, 'temporal_compression_ratio': 4, 'max_text_seq_length': 8, 'cross_attn_interval': 1, 'is_kps': False, 'is_train_face': True, 'cross_attn_dim_head': 1, 'cross_attn_num_heads': 1, 'LFE_id_dim': 2, 'LFE_vit_dim': 2, 'LFE_depth': 5, 'LFE_dim_head': 8, 'LFE_num_heads': 2, 'LFE_num_id_token': 1, 'LFE_num_querie': 1, 'LFE_output_dim': 10, 'LFE_ff_mult': 1, 'LFE_num_scale': 1},
        {'hidden_states': R((2, 1, 4, 8, 8)), 'encoder_hidden_states': R((2, 8, 8)), 'timestep': T([44, 239], 'int64'), 'id_vit_hidden': [T([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]], 'float32')], 'id_cond': T([[1.0, 1.0], [1.0, 1.0]], 'float32')},
    ),
    'Cosmos3OmniTransformer': (
        {'head_dim': 6, 'hidden_act': 'relu2', 'hidden_size': 12, 'intermediate_size': 24, 'latent_channel': 2, 'latent_patch_size': 1, 'num_attention_heads': 2, 'num_hidden_layers': 2, 'num_key_value_heads': 1, 'patch_latent_dim': 2, 'qk_norm_for_text': False, 'rms_norm_eps': 1e-05, 'rope_axes_dim': [1, 1, 1], 'rope_theta': 100000000.0, 'vocab_size': 32},
        {'input_ids': T([1, 2], 'int64'), 'text_indexes': T([0, 1], 'int64'), 'position_ids': T([[0, 0, 0], [0, 0, 0], [0, 0, 0]], 'int64'), 'und_len': 2, 'sequence_length': 3, 'vision_tokens': [R((1, 2, 1, 1, 1))], 'vision_token_shapes': [(1, 1, 1)], 'vision_sequence_indexes': T([2], 'int64'), 'vision_mse_loss_indexes': T([2], 'int64'), 'vision_timesteps': T([1.0], 'float32'), 'vision_noisy_frame_indexes': [T([0], 'int64')]},
    ),
    'CosmosTransformer3DModel': (
        {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 12, 'num_layers': 2, 'mlp_ratio': 2, 'text_embed_dim': 16, 'adaln_lora_dim': 4, 'max_size': (4, 32, 32), 'patch_size': (1, 2, 2), 'rope_scale': (2.0, 1.0, 1.0), 'concat_padding_mask': True, 'extra_pos_embed_type': 'learnable'},
        {'hidden_states': R((1, 4, 1, 16, 16)), 'timestep': T([44], 'int64'), 'encoder_hidden_states': R((1, 12, 16)), 'attention_mask': T([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], 'float32'), 'fps': 30, 'padding_mask': T([[[[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]]], 'float32')},
    ),
    'DiTTransformer2DModel': (
        {'in_channels': 4, 'out_channels': 8, 'activation_fn': 'gelu-approximate', 'num_attention_heads': 2, 'attention_head_dim': 4, 'attention_bias': True, 'num_layers': 1, 'norm_type': 'ada_norm_zero', 'num_embeds_ada_norm': 8, 'patch_size': 2, 'sample_size': 8},
        {'hidden_states': R((4, 4, 8, 8)), 'timestep': T([44, 239, 933, 760], 'int64'), 'class_labels': T([0, 3, 1, 0], 'int64')},
    ),
    'EasyAnimateTransformer3DModel': (
        {'attention_head_dim': 16, 'num_attention_heads': 2, 'in_channels': 4, 'mmdit_layers': 2, 'num_layers': 2, 'out_channels': 4, 'patch_size': 2, 'sample_height': 60, 'sample_width': 90, 'text_embed_dim': 16, 'time_embed_dim': 8, 'time_position_encoding_type': '3d_rope', 'timestep_activation_fn': 'silu'},
        {'hidden_states': R((2, 4, 2, 16, 16)), 'timestep': T([44, 239], 'int64'), 'timestep_cond': None, 'encoder_hidden_states': R((2, 16, 16)), 'encoder_hidden_states_t5': None, 'inpaint_latents': None, 'control_latents': None},
    ),
    'ErnieImageTransformer2DModel': (
        {'hidden_size': 16, 'num_attention_heads': 1, 'num_layers': 1, 'ffn_hidden_size': 16, 'in_channels': 16, 'out_channels': 16, 'patch_size': 1, 'text_in_dim': 16, 'rope_theta': 256, 'rope_axes_dim': (8, 4, 4), 'eps': 1e-06, 'qk_layernorm': True},
        {'hidden_states': R((1, 16, 16, 16)), 'timestep': T([1.0], 'float32'), 'text_bth': R((1, 16, 16)), 'text_lens': T([16], 'int64')},
    ),
    'Flux2Transformer2DModel': (
        {'patch_size': 1, 'in_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'timestep_guidance_channels': 256, 'axes_dims_rope': [4, 4, 4, 4]},
        {'hidden_states': R((1, 16, 4)), 'encoder_hidden_states': R((1, 48, 32)), 'img_ids': T([[[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 2, 0], [0, 0, 3, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 2, 0], [0, 1, 3, 0], [0, 2, 0, 0], [0, 2, 1, 0], [0, 2, 2, 0], [0, 2, 3, 0], [0, 3, 0, 0], [0, 3, 1, 0], [0, 3, 2, 0], [0, 3, 3, 0]]], 'int64'), 'txt_ids': T([[[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 3], [0, 0, 0, 4], [0, 0, 0, 5], [0, 0, 0, 6], [0, 0, 0, 7], [0, 0, 0, 8], [0, 0, 0, 9], [0, 0, 0, 10], [0, 0, 0, 11], [0, 0, 0, 12], [0, 0, 0, 13], [0, 0, 0, 14], [0, 0, 0, 15], [0, 0, 0, 16], [0, 0, 0, 17], [0, 0, 0, 18], [0, 0, 0, 19], [0, 0, 0, 20], [0, 0, 0, 21], [0, 0, 0, 22], [0, 0, 0, 23], [0, 0, 0, 24], [0, 0, 0, 25], [0, 0, 0, 26], [0, 0, 0, 27], [0, 0, 0, 28], [0, 0, 0, 29], [0, 0, 0, 30], [0, 0, 0, 31], [0, 0, 0, 32], [0, 0, 0, 33], [0, 0, 0, 34], [0, 0, 0, 35], [0, 0, 0, 36], [0, 0, 0, 37], [0, 0, 0, 38], [0, 0, 0, 39], [0, 0, 0, 40], [0, 0, 0, 41], [0, 0, 0, 42], [0, 0, 0, 43], [0, 0, 0, 44], [0, 0, 0, 45], [0, 0, 0, 46], [0, 0, 0, 47]]], 'int64'), 'timestep': T([1.0], 'float32'), 'guidance': T([1.0], 'float32')},
    ),
    'Flux3Transformer2DModel': (
        {'in_channels': 4, 'cond_in_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'timestep_channels': 32, 'axes_dims_rope': (4, 4, 4, 4)},
        {'hidden_states': R((1, 20, 4)), 'encoder_hidden_states': R((1, 12, 32)), 'img_ids': M((4, 5), width=4), 'txt_ids': R((12, 4)), 'timestep': T([0.5], 'float32'), 'image_cond_hidden_states': R((1, 6, 4)), 'image_cond_ids': T([[1, 0, 0, 0], [1, 0, 1, 0], [1, 0, 2, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 2, 0]], 'float32')},
    ),
    'FluxTransformer2DModel': (
        {'patch_size': 1, 'in_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'pooled_projection_dim': 32, 'axes_dims_rope': [4, 4, 8]},
        {'hidden_states': R((1, 16, 4)), 'encoder_hidden_states': R((1, 48, 32)), 'pooled_projections': R((1, 32)), 'img_ids': M((4, 4)), 'txt_ids': R((48, 3)), 'timestep': T([1.0], 'float32')},
    ),
    'GlmImageTransformer2DModel': (
        {'patch_size': 2, 'in_channels': 4, 'out_channels': 4, 'num_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 2, 'text_embed_dim': 32, 'time_embed_dim': 16, 'condition_dim': 8, 'prior_vq_quantizer_codebook_size': 64},
        {'hidden_states': R((1, 4, 8, 8)), 'encoder_hidden_states': R((1, 12, 32)), 'prior_token_id': T([44], 'int64'), 'prior_token_drop': T([False], 'bool'), 'timestep': T([44], 'int64'), 'target_size': T([[8.0, 8.0]], 'float32'), 'crop_coords': T([[0.0, 0.0]], 'float32')},
    ),
    'HeliosTransformer3DModel': (
        {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 32, 'ffn_dim': 32, 'num_layers': 2, 'rope_dim': (4, 4, 4)},
        {'hidden_states': R((1, 4, 2, 8, 8)), 'timestep': T([500], 'int64'), 'encoder_hidden_states': R((1, 6, 16)), 'indices_hidden_states': T([[6, 7]], 'int64'), 'latents_history_short': R((1, 4, 1, 8, 8)), 'indices_latents_history_short': T([[5]], 'int64'), 'latents_history_mid': R((1, 4, 2, 8, 8)), 'indices_latents_history_mid': T([[3, 4]], 'int64'), 'latents_history_long': R((1, 4, 3, 8, 8)), 'indices_latents_history_long': T([[0, 1, 2]], 'int64')},
    ),
    'HiDreamImageTransformer2DModel': (
        {'patch_size': 2, 'in_channels': 4, 'out_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 4, 'caption_channels': [8, 4], 'text_emb_dim': 8, 'num_routed_experts': 2, 'num_activated_experts': 2, 'axes_dims_rope': (4, 2, 2), 'max_resolution': (32, 32), 'llama_layers': (0, 1), 'force_inference_output': True},
        {'hidden_states': R((2, 4, 32, 32)), 'encoder_hidden_states_t5': R((2, 8, 8)), 'encoder_hidden_states_llama3': R((2, 2, 8, 4)), 'pooled_embeds': R((2, 8)), 'timesteps': T([44, 239], 'int64')},
    ),
    'HunyuanDiT2DModel': (
        {'sample_size': 8, 'patch_size': 2, 'in_channels': 4, 'num_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 2, 'cross_attention_dim': 8, 'cross_attention_dim_t5': 8, 'pooled_projection_dim': 4, 'hidden_size': 16, 'text_len': 4, 'text_len_t5': 4, 'activation_fn': 'gelu-approximate'},
        {'hidden_states': R((2, 4, 8, 8)), 'encoder_hidden_states': R((2, 4, 8)), 'text_embedding_mask': T([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], 'float32'), 'encoder_hidden_states_t5': R((2, 4, 8)), 'text_embedding_mask_t5': T([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], 'float32'), 'timestep': T([44.0, 239.0], 'float32'), 'image_meta_size': T([[1024.0, 1024.0, 16.0, 16.0, 0.0, 0.0], [1024.0, 1024.0, 16.0, 16.0, 0.0, 0.0]], 'float32'), 'style': T([0, 0], 'int64'), 'image_rotary_emb': [T([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], 'float32'), T([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], 'float32')]},
    ),
    'HunyuanVideo15Transformer3DModel': (
        {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 8, 'num_layers': 2, 'num_refiner_layers': 1, 'mlp_ratio': 2.0, 'patch_size': 1, 'patch_size_t': 1, 'text_embed_dim': 16, 'text_embed_2_dim': 8, 'image_embed_dim': 12, 'rope_axes_dim': (2, 2, 4), 'target_size': 16, 'task_type': 't2v'},
        {'hidden_states': R((1, 4, 1, 8, 8)), 'timestep': T([1.0], 'float32'), 'encoder_hidden_states': R((1, 6, 16)), 'encoder_hidden_states_2': R((1, 4, 8)), 'encoder_attention_mask': T([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], 'float32'), 'encoder_attention_mask_2': T([[1.0, 1.0, 1.0, 1.0]], 'float32'), 'image_embeds': T([[[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]], 'float32')},
    ),
    'HunyuanVideoFramepackTransformer3DModel': (
        {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 10, 'num_layers': 1, 'num_single_layers': 1, 'num_refiner_layers': 1, 'patch_size': 2, 'patch_size_t': 1, 'guidance_embeds': True, 'text_embed_dim': 16, 'pooled_projection_dim': 8, 'rope_axes_dim': (2, 4, 4), 'has_image_proj': True, 'image_proj_dim': 16, 'has_clean_x_embedder': True},
        {'hidden_states': R((1, 4, 1, 8, 8)), 'timestep': T([500], 'int64'), 'encoder_hidden_states': R((1, 6, 16)), 'encoder_attention_mask': T([[1, 1, 1, 1, 1, 1]], 'int64'), 'pooled_projections': R((1, 8)), 'image_embeds': R((1, 3, 16)), 'indices_latents': T([3], 'int64'), 'guidance': T([1000.0], 'float32'), 'latents_clean': R((1, 4, 2, 8, 8)), 'indices_latents_clean': T([0, 4], 'int64'), 'latents_history_2x': R((1, 4, 2, 8, 8)), 'indices_latents_history_2x': T([5, 6], 'int64'), 'latents_history_4x': R((1, 4, 16, 8, 8)), 'indices_latents_history_4x': T(list(range(7, 23)), 'int64')},
    ),
    'HunyuanVideoTransformer3DModel': (
        {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 10, 'num_layers': 1, 'num_single_layers': 1, 'num_refiner_layers': 1, 'patch_size': 1, 'patch_size_t': 1, 'guidance_embeds': True, 'text_embed_dim': 16, 'pooled_projection_dim': 8, 'rope_axes_dim': (2, 4, 4), 'image_condition_type': None},
        {'hidden_states': R((1, 4, 1, 16, 16)), 'timestep': T([44.0], 'float32'), 'encoder_hidden_states': R((1, 12, 16)), 'pooled_projections': R((1, 8)), 'encoder_attention_mask': T([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], 'float32'), 'guidance': T([44.0], 'float32')},
    ),
    'Ideogram4Transformer2DModel': (
        {'in_channels': 4, 'num_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'intermediate_size': 32, 'adaln_dim': 16, 'llm_features_dim': 8, 'mrope_section': (4, 2, 2)},
        {'hidden_states': R((1, 27, 4)), 'timestep': T([0.5], 'float32'), 'encoder_hidden_states': R((1, 27, 8)), 'position_ids': T([[[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4], [5, 0, 0], [5, 0, 1], [5, 0, 2], [5, 0, 3], [5, 0, 4], [5, 1, 0], [5, 1, 1], [5, 1, 2], [5, 1, 3], [5, 1, 4], [5, 2, 0], [5, 2, 1], [5, 2, 2], [5, 2, 3], [5, 2, 4], [5, 3, 0], [5, 3, 1], [5, 3, 2], [5, 3, 3], [5, 3, 4], [0, 0, 0], [0, 0, 0]]], 'int64'), 'segment_ids': T([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]], 'int64'), 'indicator': T([[3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, -1, -1]], 'int64')},
    ),
    'JoyImageEditPlusTransformer3DModel': (
        {'patch_size': [1, 2, 2], 'in_channels': 4, 'hidden_size': 32, 'num_attention_heads': 2, 'text_dim': 16, 'num_layers': 2, 'rope_dim_list': [4, 6, 6], 'theta': 256},
        {'hidden_states': R((1, 28, 4, 1, 2, 2)), 'timestep': T([1.0], 'float32'), 'encoder_hidden_states': R((1, 6, 16)), 'encoder_hidden_states_mask': T([[1, 1, 1, 1, 1, 1]], 'int64'), 'shape_list': [[(1, 4, 5), (1, 2, 3)]]},
    ),
    'JoyImageEditTransformer3DModel': (
        {'patch_size': [1, 2, 2], 'in_channels': 16, 'hidden_size': 32, 'num_attention_heads': 2, 'text_dim': 16, 'num_layers': 2, 'rope_dim_list': [4, 6, 6], 'theta': 256},
        {'hidden_states': R((1, 16, 1, 8, 8)), 'encoder_hidden_states': R((1, 12, 16)), 'timestep': T([1.0], 'float32')},
    ),
    'Krea2Transformer2DModel': (
        {'in_channels': 4, 'num_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'num_key_value_heads': 1, 'intermediate_size': 32, 'timestep_embed_dim': 16, 'text_hidden_dim': 8, 'num_text_layers': 2, 'text_num_attention_heads': 2, 'text_num_key_value_heads': 2, 'text_intermediate_size': 16, 'num_layerwise_text_blocks': 1, 'num_refiner_text_blocks': 1, 'axes_dims_rope': (4, 6, 6)},
        {'hidden_states': R((1, 20, 4)), 'encoder_hidden_states': R((1, 6, 2, 8)), 'timestep': T([0.5], 'float32'), 'position_ids': T([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 0, 4], [0, 1, 0], [0, 1, 1], [0, 1, 2], [0, 1, 3], [0, 1, 4], [0, 2, 0], [0, 2, 1], [0, 2, 2], [0, 2, 3], [0, 2, 4], [0, 3, 0], [0, 3, 1], [0, 3, 2], [0, 3, 3], [0, 3, 4]], 'int64')},
    ),
    'LTX2VideoTransformer3DModel': (
        {'in_channels': 4, 'out_channels': 4, 'patch_size': 1, 'patch_size_t': 1, 'num_attention_heads': 2, 'attention_head_dim': 8, 'cross_attention_dim': 16, 'audio_in_channels': 4, 'audio_out_channels': 4, 'audio_num_attention_heads': 2, 'audio_attention_head_dim': 4, 'audio_cross_attention_dim': 8, 'num_layers': 2, 'qk_norm': 'rms_norm_across_heads', 'caption_channels': 16, 'rope_double_precision': False},
        {'hidden_states': R((2, 512, 4)), 'audio_hidden_states': R((2, 9, 4)), 'encoder_hidden_states': R((2, 16, 16)), 'audio_encoder_hidden_states': R((2, 16, 16)), 'timestep': R((2,)), 'encoder_attention_mask': T([[True, True, True, True, True, True, True, True, True, True, True, True, True, True, True, True], [True, True, True, True, True, True, True, True, True, True, True, True, True, True, True, True]], 'bool'), 'num_frames': 2, 'height': 16, 'width': 16, 'audio_num_frames': 9, 'fps': 25.0},
    ),
    'LTXVideoTransformer3DModel': (
        {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 8, 'cross_attention_dim': 16, 'num_layers': 1, 'qk_norm': 'rms_norm_across_heads', 'caption_channels': 16},
        {'hidden_states': R((2, 512, 4)), 'encoder_hidden_states': R((2, 16, 16)), 'timestep': T([44, 239], 'int64'), 'encoder_attention_mask': T([[True, True, True, True, True, True, True, True, True, True, True, True, True, True, True, True], [True, True, True, True, True, True, True, True, True, True, True, True, True, True, True, True]], 'bool'), 'num_frames': 2, 'height': 16, 'width': 16},
    ),
    'LatteTransformer3DModel': (
        {'sample_size': 8, 'num_layers': 1, 'patch_size': 2, 'attention_head_dim': 4, 'num_attention_heads': 2, 'caption_channels': 8, 'in_channels': 4, 'cross_attention_dim': 8, 'out_channels': 8, 'attention_bias': True, 'activation_fn': 'gelu-approximate', 'num_embeds_ada_norm': 1000, 'norm_type': 'ada_norm_single', 'norm_elementwise_affine': False, 'norm_eps': 1e-06},
        {'hidden_states': R((2, 4, 1, 8, 8)), 'encoder_hidden_states': R((2, 8, 8)), 'timestep': T([44, 239], 'int64'), 'enable_temporal_attentions': True},
    ),
    'LongCatAudioDiTTransformer': (
        {'dit_dim': 64, 'dit_depth': 2, 'dit_heads': 4, 'dit_text_dim': 32, 'latent_dim': 8, 'text_conv': False},
        {'hidden_states': R((1, 16, 8)), 'encoder_hidden_states': R((1, 10, 32)), 'encoder_attention_mask': T([[True, True, True, True, True, True, True, True, True, True]], 'bool'), 'attention_mask': T([[True, True, True, True, True, True, True, True, True, True, True, True, True, True, True, True]], 'bool'), 'timestep': T([1.0], 'float32')},
    ),
    'LongCatImageTransformer2DModel': (
        {'patch_size': 1, 'in_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'pooled_projection_dim': 32, 'axes_dims_rope': [4, 4, 8]},
        {'hidden_states': R((1, 16, 4)), 'encoder_hidden_states': R((1, 48, 32)), 'img_ids': M((4, 4)), 'txt_ids': R((48, 3)), 'timestep': T([1.0], 'float32'), 'guidance': R((1,))},
    ),
    'Lumina2Transformer2DModel': (
        {'sample_size': 16, 'patch_size': 2, 'in_channels': 4, 'hidden_size': 24, 'num_layers': 2, 'num_refiner_layers': 1, 'num_attention_heads': 3, 'num_kv_heads': 1, 'multiple_of': 2, 'ffn_dim_multiplier': None, 'norm_eps': 1e-05, 'scaling_factor': 1.0, 'axes_dim_rope': (4, 2, 2), 'axes_lens': (128, 128, 128), 'cap_feat_dim': 32},
        {'hidden_states': R((2, 4, 16, 16)), 'encoder_hidden_states': R((2, 16, 32)), 'timestep': R((2,)), 'encoder_attention_mask': T([[True, True, True, True, True, True, True, True, True, True, True, True, True, True, True, True], [True, True, True, True, True, True, True, True, True, True, True, True, True, True, True, True]], 'bool')},
    ),
    'LuminaNextDiT2DModel': (
        {'sample_size': 16, 'patch_size': 2, 'in_channels': 4, 'hidden_size': 24, 'num_layers': 2, 'num_attention_heads': 3, 'num_kv_heads': 1, 'multiple_of': 16, 'ffn_dim_multiplier': None, 'norm_eps': 1e-05, 'learn_sigma': False, 'qk_norm': True, 'cross_attention_dim': 32, 'scaling_factor': 1.0},
        {'hidden_states': R((2, 4, 16, 16)), 'encoder_hidden_states': R((2, 16, 32)), 'timestep': R((2,)), 'encoder_mask': R((2, 16)), 'image_rotary_emb': R((384, 384, 4)), 'cross_attention_kwargs': {}},
    ),
    'MiniMaxH3Transformer3DModel': (
        {'num_attention_heads': 2, 'attention_head_dim': 16, 'hidden_size': 24, 'num_layers': 2, 'num_refiner_layers': 2, 'ffn_dim': 32, 'in_channels': 4, 'audio_in_channels': 6, 'patch_size': (1, 2, 2), 'text_dim': 8, 'freq_dim': 8, 'time_embed_hidden_dim': 24, 'time_embed_dim': 16, 'rope_freq_dim': 2},
        {'hidden_states': R((2, 8, 16)), 'audio_hidden_states': R((2, 6, 6)), 'encoder_hidden_states': R((2, 4, 8)), 'timestep': R((2,)), 'timestep_indices': T([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], 'int64'), 'token_tags': T([1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0], 'int64'), 'position_ids': T([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [3.0, 0.0, 0.0], [4.0, 0.0, 0.0], [5.0, 0.0, 0.0], [6.0, 0.0, 0.0], [7.0, 0.0, 0.0], [8.0, 0.0, 0.0], [9.0, 0.0, 0.0], [10.0, 0.0, 0.0], [11.0, 1.0, 1.0], [12.0, 2.0, 0.0], [13.0, 3.0, 1.0], [14.0, 0.0, 0.0], [15.0, 1.0, 1.0], [16.0, 2.0, 0.0], [17.0, 3.0, 1.0]], 'float32'), 'video_indices': T([10, 11, 12, 13, 14, 15, 16, 17], 'int64'), 'audio_indices': T([4, 5, 6, 7, 8, 9], 'int64'), 'text_indices': T([0, 1, 2, 3], 'int64')},
    ),
    'MiniMaxMusic3Transformer1DModel': (
        {'in_channels': 8, 'condition_dim': 16, 'num_layers': 2, 'num_attention_heads': 2, 'attention_head_dim': 8, 'ff_inner_dim': 32, 'rotary_dim': 4, 'fourier_embedding_dim': 8},
        {'hidden_states': R((1, 8, 24)), 'encoder_hidden_states': R((1, 24, 16)), 'timestep': R((1,))},
    ),
    'MochiTransformer3DModel': (
        {'patch_size': 2, 'num_attention_heads': 2, 'attention_head_dim': 8, 'num_layers': 2, 'pooled_projection_dim': 16, 'in_channels': 4, 'out_channels': None, 'qk_norm': 'rms_norm', 'text_embed_dim': 16, 'time_embed_dim': 4, 'activation_fn': 'swiglu', 'max_sequence_length': 16},
        {'hidden_states': R((2, 4, 2, 16, 16)), 'encoder_hidden_states': R((2, 16, 16)), 'timestep': T([44, 239], 'int64'), 'encoder_attention_mask': T([[True, True, True, True, True, True, True, True, True, True, True, True, True, True, True, True], [True, True, True, True, True, True, True, True, True, True, True, True, True, True, True, True]], 'bool')},
    ),
    'MotifVideoTransformer3DModel': (
        {'in_channels': 33, 'out_channels': 16, 'num_attention_heads': 2, 'attention_head_dim': 12, 'num_layers': 1, 'num_single_layers': 1, 'num_decoder_layers': 0, 'mlp_ratio': 4.0, 'patch_size': 1, 'patch_size_t': 1, 'qk_norm': 'rms_norm', 'norm_type': 'layer_norm', 'text_embed_dim': 32, 'image_embed_dim': 4, 'rope_theta': 256.0, 'rope_axes_dim': (4, 4, 4), 'enable_text_cross_attention_dual': False, 'enable_text_cross_attention_single': False},
        {'hidden_states': R((1, 33, 9, 16, 16)), 'encoder_hidden_states': R((1, 12, 32)), 'timestep': T([44], 'int64')},
    ),
    'NucleusMoEImageTransformer2DModel': (
        {'patch_size': 2, 'in_channels': 16, 'out_channels': 4, 'num_layers': 2, 'attention_head_dim': 16, 'num_attention_heads': 4, 'joint_attention_dim': 16, 'axes_dims_rope': (8, 4, 4), 'moe_enabled': False, 'capacity_factors': [8.0, 8.0]},
        {'hidden_states': R((1, 16, 16)), 'encoder_hidden_states': R((1, 8, 16)), 'encoder_hidden_states_mask': T([[1, 1, 1, 1, 1, 1, 1, 1]], 'int64'), 'timestep': T([1.0], 'float32'), 'img_shapes': [(1, 4, 4)]},
    ),
    'OmniGenTransformer2DModel': (
        {'hidden_size': 16, 'num_attention_heads': 4, 'num_key_value_heads': 4, 'intermediate_size': 32, 'num_layers': 1, 'in_channels': 4, 'time_step_dim': 4, 'vocab_size': 64, 'pad_token_id': 0, 'pos_embed_max_size': 16, 'rope_scaling': {'long_factor': [1, 2], 'short_factor': [1, 2]}},
        {'hidden_states': R((1, 4, 8, 12)), 'timestep': T([0.5], 'float32'), 'input_ids': I((1, 5), 64), 'input_img_latents': [], 'input_image_sizes': {}, 'attention_mask': None, 'position_ids': T([list(range(30))], 'int64')},
    ),
    'OvisImageTransformer2DModel': (
        {'patch_size': 1, 'in_channels': 4, 'out_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'axes_dims_rope': (4, 4, 8)},
        {'hidden_states': R((1, 16, 4)), 'encoder_hidden_states': R((1, 48, 32)), 'img_ids': M((4, 4)), 'txt_ids': R((48, 3)), 'timestep': T([1.0], 'float32')},
    ),
    'PRXTransformer2DModel': (
        {'in_channels': 16, 'patch_size': 2, 'context_in_dim': 16, 'hidden_size': 32, 'mlp_ratio': 2.0, 'num_heads': 2, 'depth': 1, 'axes_dim': [8, 8], 'theta': 10000},
        {'hidden_states': R((1, 16, 16, 14)), 'encoder_hidden_states': R((1, 5, 16)), 'timestep': T([1.0], 'float32')},
    ),
    'PixArtTransformer2DModel': (
        {'sample_size': 8, 'num_layers': 1, 'patch_size': 2, 'attention_head_dim': 2, 'num_attention_heads': 2, 'in_channels': 4, 'cross_attention_dim': 8, 'out_channels': 8, 'attention_bias': True, 'activation_fn': 'gelu-approximate', 'num_embeds_ada_norm': 8, 'norm_type': 'ada_norm_single', 'norm_elementwise_affine': False, 'norm_eps': 1e-06, 'use_additional_conditions': False, 'caption_channels': None},
        {'hidden_states': R((4, 4, 8, 8)), 'timestep': T([44, 239, 933, 760], 'int64'), 'encoder_hidden_states': R((4, 8, 8)), 'added_cond_kwargs': {'aspect_ratio': None, 'resolution': None}},
    ),
    'QwenImageTransformer2DModel': (
        {'patch_size': 2, 'in_channels': 16, 'out_channels': 4, 'num_layers': 2, 'attention_head_dim': 16, 'num_attention_heads': 4, 'joint_attention_dim': 16, 'guidance_embeds': False, 'axes_dims_rope': (8, 4, 4)},
        {'hidden_states': R((1, 16, 16)), 'encoder_hidden_states': R((1, 8, 16)), 'encoder_hidden_states_mask': T([[1, 1, 1, 1, 1, 1, 1, 1]], 'int64'), 'timestep': T([1.0], 'float32'), 'img_shapes': [(1, 4, 4)]},
    ),
    'SD3Transformer2DModel': (
        {'sample_size': 32, 'patch_size': 1, 'in_channels': 4, 'num_layers': 2, 'attention_head_dim': 8, 'num_attention_heads': 2, 'caption_projection_dim': 16, 'joint_attention_dim': 32, 'pooled_projection_dim': 64, 'out_channels': 4, 'pos_embed_max_size': 96, 'dual_attention_layers': (), 'qk_norm': None},
        {'hidden_states': R((1, 4, 16, 12)), 'encoder_hidden_states': R((1, 9, 32)), 'pooled_projections': R((1, 64)), 'timestep': T([44], 'int64')},
    ),
    'SanaTransformer2DModel': (
        {'patch_size': 1, 'in_channels': 4, 'out_channels': 4, 'num_layers': 1, 'attention_head_dim': 4, 'num_attention_heads': 2, 'num_cross_attention_heads': 2, 'cross_attention_head_dim': 4, 'cross_attention_dim': 8, 'caption_channels': 8, 'sample_size': 32},
        {'hidden_states': R((2, 4, 32, 32)), 'encoder_hidden_states': R((2, 8, 8)), 'timestep': T([44, 239], 'int64')},
    ),
    'SanaVideoTransformer3DModel': (
        {'in_channels': 16, 'out_channels': 16, 'num_attention_heads': 2, 'attention_head_dim': 12, 'num_layers': 2, 'num_cross_attention_heads': 2, 'cross_attention_head_dim': 12, 'cross_attention_dim': 24, 'caption_channels': 16, 'mlp_ratio': 2.5, 'dropout': 0.0, 'attention_bias': False, 'sample_size': 8, 'patch_size': (1, 2, 2), 'norm_elementwise_affine': False, 'norm_eps': 1e-06, 'qk_norm': 'rms_norm_across_heads', 'rope_max_seq_len': 32},
        {'hidden_states': R((1, 16, 2, 16, 16)), 'encoder_hidden_states': R((1, 12, 16)), 'timestep': T([44], 'int64')},
    ),
    'SkyReelsV2Transformer3DModel': (
        {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'rope_max_seq_len': 32},
        {'hidden_states': R((1, 4, 2, 16, 16)), 'encoder_hidden_states': R((1, 12, 16)), 'timestep': T([44], 'int64')},
    ),
    'StableAudio3DiTModel': (
        {'io_channels': 8, 'patch_size': 1, 'embed_dim': 32, 'depth': 2, 'num_heads': 4, 'cond_token_dim': 16, 'global_cond_dim': 12, 'local_add_cond_dim': 5, 'timestep_features_dim': 16, 'ff_mult': 2, 'num_memory_tokens': 3, 'use_differential_attention': False},
        {'hidden_states': R((2, 8, 16)), 'timestep': R((2,)), 'encoder_hidden_states': R((2, 4, 16)), 'global_hidden_states': R((2, 12))},
    ),
    'TransformerTemporalModel': (
        {'num_attention_heads': 8, 'attention_head_dim': 4, 'in_channels': 4, 'num_layers': 1, 'norm_num_groups': 1},
        {'hidden_states': R((2, 4, 32, 32)), 'timestep': T([44, 239], 'int64')},
    ),
    'UNet1DModel': (
        {'block_out_channels': (8, 8, 16, 16), 'in_channels': 14, 'out_channels': 14, 'time_embedding_type': 'positional', 'use_timestep_embedding': True, 'flip_sin_to_cos': False, 'freq_shift': 1.0, 'out_block_type': 'OutConv1DBlock', 'mid_block_type': 'MidResTemporalBlock1D', 'down_block_types': ('DownResnetBlock1D', 'DownResnetBlock1D', 'DownResnetBlock1D', 'DownResnetBlock1D'), 'up_block_types': ('UpResnetBlock1D', 'UpResnetBlock1D', 'UpResnetBlock1D'), 'act_fn': 'swish'},
        {'sample': R((4, 14, 16)), 'timestep': T([10, 10, 10, 10], 'int64')},
    ),
    'UNet2DModel': (
        {'block_out_channels': (4, 8), 'norm_num_groups': 2, 'down_block_types': ('DownBlock2D', 'AttnDownBlock2D'), 'up_block_types': ('AttnUpBlock2D', 'UpBlock2D'), 'attention_head_dim': 3, 'out_channels': 3, 'in_channels': 3, 'layers_per_block': 2, 'sample_size': 32},
        {'sample': R((4, 3, 32, 32)), 'timestep': T([10], 'int64')},
    ),
    'UNet3DConditionModel': (
        {'block_out_channels': (4, 8), 'norm_num_groups': 4, 'down_block_types': ('CrossAttnDownBlock3D', 'DownBlock3D'), 'up_block_types': ('UpBlock3D', 'CrossAttnUpBlock3D'), 'cross_attention_dim': 8, 'attention_head_dim': 2, 'out_channels': 4, 'in_channels': 4, 'layers_per_block': 1, 'sample_size': 16},
        {'sample': R((1, 4, 2, 12, 14)), 'timestep': T([10], 'int64'), 'encoder_hidden_states': R((1, 4, 8))},
    ),
    'UNetControlNetXSModel': (
        {'sample_size': 16, 'down_block_types': ('DownBlock2D', 'CrossAttnDownBlock2D'), 'up_block_types': ('CrossAttnUpBlock2D', 'UpBlock2D'), 'block_out_channels': (4, 8), 'cross_attention_dim': 8, 'transformer_layers_per_block': 1, 'num_attention_heads': 2, 'norm_num_groups': 4, 'upcast_attention': False, 'ctrl_block_out_channels': [2, 4], 'ctrl_num_attention_heads': 4, 'ctrl_max_norm_num_groups': 2, 'ctrl_conditioning_embedding_out_channels': (2, 2)},
        {'sample': R((1, 4, 16, 16)), 'timestep': T([10], 'int64'), 'encoder_hidden_states': R((1, 4, 8)), 'controlnet_cond': R((1, 3, 32, 32)), 'conditioning_scale': 1},
    ),
    'UNetMotionModel': (
        {'block_out_channels': (16, 32), 'norm_num_groups': 16, 'down_block_types': ('CrossAttnDownBlockMotion', 'DownBlockMotion'), 'up_block_types': ('UpBlockMotion', 'CrossAttnUpBlockMotion'), 'cross_attention_dim': 16, 'num_attention_heads': 2, 'out_channels': 4, 'in_channels': 4, 'layers_per_block': 1, 'sample_size': 16},
        {'sample': R((1, 4, 2, 12, 14)), 'timestep': T([10], 'int64'), 'encoder_hidden_states': R((2, 4, 16))},
    ),
    'UNetSpatioTemporalConditionModel': (
        {'block_out_channels': (32, 64), 'down_block_types': ('CrossAttnDownBlockSpatioTemporal', 'DownBlockSpatioTemporal'), 'up_block_types': ('UpBlockSpatioTemporal', 'CrossAttnUpBlockSpatioTemporal'), 'cross_attention_dim': 32, 'num_attention_heads': 2, 'out_channels': 4, 'in_channels': 4, 'layers_per_block': 1, 'sample_size': 16, 'projection_class_embeddings_input_dim': 96, 'addition_time_embed_dim': 32},
        {'sample': R((1, 2, 4, 12, 14)), 'timestep': T([10], 'int64'), 'encoder_hidden_states': R((1, 1, 32)), 'added_time_ids': R((1, 3))},
    ),
    'WanAnimate2Transformer3DModel': (
        {'patch_size': (1, 2, 2), 'text_len': 16, 'in_dim': 36, 'dim': 128, 'ffn_dim': 256, 'freq_dim': 64, 'text_dim': 32, 'out_dim': 16, 'num_heads': 4, 'num_layers': 2, 'cross_attn_norm': True, 'use_img_emb': True},
        {'hidden_states': [R((16, 2, 4, 4))], 'timestep': T([1.0], 'float32'), 'encoder_hidden_states': [R((8, 32))], 'condition_latents': [R((20, 2, 4, 4))], 'encoder_hidden_states_image': R((1, 4, 1280)), 'seq_len': 8, 'offset_grid_sizes': T([[2, 2, 2]], 'int64')},
    ),
    'WanAnimateTransformer3DModel': (
        {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 12, 'latent_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'image_dim': 16, 'rope_max_seq_len': 32, 'motion_encoder_channel_sizes': {'4': 16, '8': 16, '16': 16}, 'motion_encoder_size': 16, 'motion_style_dim': 8, 'motion_dim': 4, 'motion_encoder_dim': 16, 'face_encoder_hidden_dim': 16, 'face_encoder_num_heads': 2, 'inject_face_latents_blocks': 2},
        {'hidden_states': R((1, 12, 21, 16, 16)), 'timestep': T([44], 'int64'), 'encoder_hidden_states': R((1, 12, 16)), 'encoder_hidden_states_image': R((1, 12, 16)), 'pose_hidden_states': R((1, 4, 20, 16, 16)), 'face_pixel_values': R((1, 3, 77, 16, 16))},
    ),
    'WanTransformer3DModel': (
        {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'rope_max_seq_len': 32},
        {'hidden_states': R((1, 4, 2, 16, 16)), 'encoder_hidden_states': R((1, 12, 16)), 'timestep': T([44], 'int64')},
    ),
    'WanVACETransformer3DModel': (
        {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 16, 'out_channels': 16, 'text_dim': 32, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 4, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'rope_max_seq_len': 32, 'vace_layers': [0, 2], 'vace_in_channels': 48},
        {'hidden_states': R((1, 16, 2, 16, 16)), 'encoder_hidden_states': R((1, 12, 32)), 'control_hidden_states': R((1, 48, 2, 16, 16)), 'timestep': T([44], 'int64')},
    ),
    'ZImageTransformer2DModel': (
        {'all_patch_size': (2,), 'all_f_patch_size': (1,), 'in_channels': 16, 'dim': 16, 'n_layers': 1, 'n_refiner_layers': 1, 'n_heads': 1, 'n_kv_heads': 2, 'qk_norm': True, 'cap_feat_dim': 16, 'rope_theta': 256.0, 't_scale': 1000.0, 'axes_dims': [8, 4, 4], 'axes_lens': [256, 32, 32]},
        {'x': [R((16, 1, 16, 12))], 'cap_feats': [R((16, 16))], 't': T([0.5], 'float32')},
    ),
    'UNet2DConditionModel': (
        {'sample_size': 16, 'in_channels': 4, 'out_channels': 4, 'down_block_types': ('CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'), 'up_block_types': ('CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'), 'block_out_channels': (32, 64), 'layers_per_block': 1, 'attention_head_dim': (4, 8), 'cross_attention_dim': 32, 'norm_num_groups': 8},
        {'sample': R((1, 4, 15, 17)), 'timestep': T([10], 'int64'), 'encoder_hidden_states': R((1, 7, 32))},
    ),
    'Transformer2DModel': (
        {'in_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 8, 'num_layers': 1, 'cross_attention_dim': 16, 'norm_num_groups': 2},
        {'hidden_states': R((1, 4, 7, 9)), 'encoder_hidden_states': R((1, 5, 16))},
    ),
    'StableAudioDiTModel': (
        {'sample_size': 4, 'in_channels': 3, 'num_layers': 2, 'attention_head_dim': 4, 'num_key_value_attention_heads': 2, 'out_channels': 3, 'cross_attention_dim': 4, 'time_proj_dim': 8, 'global_states_input_dim': 8, 'cross_attention_input_dim': 4},
        {'hidden_states': R((1, 3, 13)), 'timestep': T([10.0]), 'encoder_hidden_states': R((1, 5, 4)), 'global_hidden_states': R((1, 1, 8))},
    ),
    'HunyuanImageTransformer2DModel': (
        {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 8, 'num_layers': 1, 'num_single_layers': 1, 'num_refiner_layers': 1, 'patch_size': (1, 1), 'text_embed_dim': 16, 'rope_axes_dim': (4, 4)},
        {'hidden_states': R((1, 4, 6, 8)), 'timestep': T([500.0], 'float32'), 'encoder_hidden_states': R((1, 7, 16)), 'encoder_attention_mask': T([[1, 1, 1, 1, 1, 1, 1]], 'int64')},
    ),
    'DreamLiteUNetModel': (
        {'sample_size': 16, 'in_channels': 4, 'out_channels': 4, 'block_out_channels': (16, 32, 32), 'layers_per_block': 1, 'norm_num_groups': 8, 'cross_attention_dim': 16, 'attention_head_dim': 8},
        {'sample': R((1, 4, 15, 17)), 'timestep': T([10], 'int64'), 'encoder_hidden_states': R((1, 7, 16))},
    ),
    'AudioLDM2UNet2DConditionModel': (
        {'block_out_channels': (8, 16), 'layers_per_block': 1, 'norm_num_groups': 8, 'sample_size': 16, 'in_channels': 4, 'out_channels': 4, 'down_block_types': ('DownBlock2D', 'CrossAttnDownBlock2D'), 'up_block_types': ('CrossAttnUpBlock2D', 'UpBlock2D'), 'cross_attention_dim': ([None, 8, 16], [None, 8, 16]), 'attention_head_dim': 4},
        {'sample': R((1, 4, 13, 8)), 'timestep': T([10], 'int64'), 'encoder_hidden_states': R((1, 5, 8)), 'encoder_hidden_states_1': R((1, 6, 16))},
    ),
    'I2VGenXLUNet': (
        {'in_channels': 4, 'out_channels': 4, 'down_block_types': ('CrossAttnDownBlock3D', 'DownBlock3D'), 'up_block_types': ('UpBlock3D', 'CrossAttnUpBlock3D'), 'block_out_channels': (4, 8), 'cross_attention_dim': 4, 'attention_head_dim': 4, 'num_attention_heads': None, 'norm_num_groups': 2},
        {'sample': R((1, 4, 2, 12, 14)), 'timestep': T([10], 'int64'), 'fps': T([8], 'int64'), 'image_latents': R((1, 4, 2, 12, 14)), 'image_embeddings': R((1, 4)), 'encoder_hidden_states': R((1, 5, 4))},
    ),
    'Kandinsky3UNet': (
        {'in_channels': 4, 'time_embedding_dim': 4, 'groups': 2, 'attention_head_dim': 4, 'layers_per_block': 2, 'block_out_channels': (8, 16, 32), 'cross_attention_dim': 4, 'encoder_hid_dim': 8},
        {'sample': R((1, 4, 16, 12)), 'timestep': T([10], 'int64'), 'encoder_hidden_states': R((1, 5, 8)), 'encoder_attention_mask': T([[1, 1, 1, 1, 1]], 'int64')},
    ),
    'UVit2DModel': (
        {'hidden_size': 8, 'use_bias': False, 'cond_embed_dim': 8, 'micro_cond_encode_dim': 2, 'micro_cond_embed_dim': 10, 'encoder_hidden_size': 8, 'vocab_size': 32, 'codebook_size': 8, 'in_channels': 8, 'block_out_channels': 8, 'num_res_blocks': 1, 'downsample': True, 'upsample': True, 'block_num_heads': 1, 'num_hidden_layers': 1, 'num_attention_heads': 2, 'intermediate_size': 8},
        {'input_ids': I((1, 8, 6), 32), 'encoder_hidden_states': R((1, 5, 8)), 'pooled_text_emb': R((1, 8)), 'micro_conds': R((1, 5))},
    ),
    'StableCascadeUNet': (
        {'in_channels': 4, 'out_channels': 4, 'timestep_ratio_embedding_dim': 8, 'patch_size': 1, 'conditioning_dim': 16, 'block_out_channels': (16, 16), 'num_attention_heads': (2, 2), 'down_num_layers_per_block': (1, 1), 'up_num_layers_per_block': (1, 1), 'down_blocks_repeat_mappers': (1, 1), 'up_blocks_repeat_mappers': (1, 1), 'clip_text_in_channels': 8, 'clip_text_pooled_in_channels': 8, 'clip_image_in_channels': 8, 'clip_seq': 2, 'dropout': (0.0, 0.0), 'self_attn': True, 'timestep_conditioning_type': ('sca',)},
        {'sample': R((1, 4, 12, 8)), 'timestep_ratio': T([0.5], 'float32'), 'clip_text_pooled': R((1, 1, 8)), 'clip_text': R((1, 5, 8)), 'clip_img': R((1, 1, 8))},
    ),
    'Kandinsky5Transformer3DModel': (
        {'in_visual_dim': 4, 'in_text_dim': 16, 'in_text_dim2': 8, 'time_dim': 16, 'out_visual_dim': 4, 'patch_size': (1, 2, 2), 'model_dim': 32, 'ff_dim': 64, 'num_text_blocks': 1, 'num_visual_blocks': 2, 'axes_dims': (4, 6, 6)},
        {'hidden_states': R((1, 2, 8, 12, 4)), 'encoder_hidden_states': R((1, 6, 16)), 'timestep': T([500.0], 'float32'), 'pooled_projections': R((1, 8)), 'visual_rope_pos': [T([0, 1], 'int64'), T([0, 1, 2, 3], 'int64'), T([0, 1, 2, 3, 4, 5], 'int64')], 'text_rope_pos': T([0, 1, 2, 3, 4, 5], 'int64')},
    ),
    'Kandinsky6Transformer3DModel': (
        {'in_visual_dim': 4, 'out_visual_dim': 4, 'in_text_dim': 16, 'in_text_dim2': 8, 'time_dim': 16, 'patch_size': (1, 2, 2), 'model_dim': 32, 'ff_dim': 64, 'num_text_blocks': 1, 'num_visual_blocks': 2, 'axes_dims': (4, 6, 6), 'visual_cond': False, 'in_audio_dim': 4, 'out_audio_dim': 4},
        {'hidden_states': R((1, 2, 8, 12, 4)), 'encoder_hidden_states': R((1, 6, 16)), 'pooled_projections': R((1, 8)), 'timestep': T([500.0], 'float32')},
    ),
    'DreamLiteTransformer2DModel': (
        {'num_attention_heads': 2, 'attention_head_dim': 8, 'in_channels': 4, 'num_layers': 1, 'norm_num_groups': 2, 'cross_attention_dim': 16, 'qk_norm': 'rms_norm'},
        {'hidden_states': R((1, 4, 7, 9)), 'encoder_hidden_states': R((1, 5, 16))},
    ),
    'UniDiffuserModel': (
        {'text_dim': 16, 'clip_img_dim': 16, 'num_text_tokens': 5, 'num_attention_heads': 2, 'attention_head_dim': 8, 'in_channels': 4, 'out_channels': 4, 'num_layers': 3, 'norm_num_groups': 8, 'sample_size': 12, 'patch_size': 2, 'activation_fn': 'gelu', 'num_embeds_ada_norm': 1000, 'block_type': 'unidiffuser', 'use_data_type_embedding': True},
        {'latent_image_embeds': R((1, 4, 12, 12)), 'image_embeds': R((1, 1, 16)), 'prompt_embeds': R((1, 5, 16)), 'timestep_img': T([10], 'int64'), 'timestep_text': T([0], 'int64'), 'data_type': 1},
    ),
    'BriaFibo2Transformer2DModel': (
        {'in_channels': 4, 'patch_size': 2, 'dim': 32, 'n_layers': 2, 'n_refiner_layers': 1, 'n_heads': 2, 'cap_feat_dim': 16, 'injection_layer_ids': (1,), 'perceiver_num_layers': 1, 'min_num_gist_tokens': 4, 'max_num_gist_tokens': 8, 'gist_step': 4, 'gist_min_text_len': 4, 'gist_max_text_len': 16, 'axes_dims': (4, 6, 6), 'axes_lens': (64, 32, 32)},
        {'hidden_states': R((1, 4, 8, 12)), 'timestep': T([0.5], 'float32'), 'encoder_hidden_states': R((1, 2, 6, 16)), 'encoder_attention_mask': T([[True, True, True, True, True, True]], 'bool'), 'context_latents': [R((1, 4, 4, 4))]},
    ),
}


#: further configs of a class from diffusers' own model tests, whose layouts need a reading of their own:
#: ``VARIANTS["Class[variant]"] = (config, inputs)``, built by `build_tiny_model` like `TINY` entries
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # NCSN++ (score SDE): skip blocks resample through resnet_down / resnet_up (diffusers' test_models_unet_2d)
    'UNet2DModel[ncsnpp]': (
        {'block_out_channels': (32, 64, 64, 64), 'in_channels': 3, 'layers_per_block': 1, 'out_channels': 3, 'time_embedding_type': 'fourier', 'norm_eps': 1e-06, 'mid_block_scale_factor': 1.4142135623730951, 'norm_num_groups': None, 'down_block_types': ('SkipDownBlock2D', 'AttnSkipDownBlock2D', 'SkipDownBlock2D', 'SkipDownBlock2D'), 'up_block_types': ('SkipUpBlock2D', 'SkipUpBlock2D', 'AttnSkipUpBlock2D', 'SkipUpBlock2D')},
        {'sample': R((1, 3, 16, 16)), 'timestep': T([10], 'int64')},
    ),
    # FLUX.2 Klein-KV style: 4 reference tokens (a 4x1 grid) packed ahead of the 4x4 target, both at t = 0
    # (diffusers' Flux2TransformerKVCacheTesterConfig)
    'Flux2Transformer2DModel[refs-ahead]': (
        TINY['Flux2Transformer2DModel'][0],
        {'hidden_states': R((1, 20, 4)), 'encoder_hidden_states': R((1, 48, 32)), 'img_ids': T([[[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 0, 0], [0, 3, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 2, 0], [0, 0, 3, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 2, 0], [0, 1, 3, 0], [0, 2, 0, 0], [0, 2, 1, 0], [0, 2, 2, 0], [0, 2, 3, 0], [0, 3, 0, 0], [0, 3, 1, 0], [0, 3, 2, 0], [0, 3, 3, 0]]], 'int64'), 'txt_ids': T([[[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 3], [0, 0, 0, 4], [0, 0, 0, 5], [0, 0, 0, 6], [0, 0, 0, 7], [0, 0, 0, 8], [0, 0, 0, 9], [0, 0, 0, 10], [0, 0, 0, 11], [0, 0, 0, 12], [0, 0, 0, 13], [0, 0, 0, 14], [0, 0, 0, 15], [0, 0, 0, 16], [0, 0, 0, 17], [0, 0, 0, 18], [0, 0, 0, 19], [0, 0, 0, 20], [0, 0, 0, 21], [0, 0, 0, 22], [0, 0, 0, 23], [0, 0, 0, 24], [0, 0, 0, 25], [0, 0, 0, 26], [0, 0, 0, 27], [0, 0, 0, 28], [0, 0, 0, 29], [0, 0, 0, 30], [0, 0, 0, 31], [0, 0, 0, 32], [0, 0, 0, 33], [0, 0, 0, 34], [0, 0, 0, 35], [0, 0, 0, 36], [0, 0, 0, 37], [0, 0, 0, 38], [0, 0, 0, 39], [0, 0, 0, 40], [0, 0, 0, 41], [0, 0, 0, 42], [0, 0, 0, 43], [0, 0, 0, 44], [0, 0, 0, 45], [0, 0, 0, 46], [0, 0, 0, 47]]], 'int64'), 'timestep': T([1.0], 'float32'), 'guidance': T([1.0], 'float32')},
    ),
}


def _make(spec: Any, gen: torch.Generator) -> Any:
    if isinstance(spec, R):
        return torch.randn(spec.shape, generator=gen).to(getattr(torch, spec.dtype))
    if isinstance(spec, T):
        return torch.tensor(spec.values, dtype=getattr(torch, spec.dtype))
    if isinstance(spec, I):
        return torch.randint(0, spec.high, spec.shape, generator=gen, dtype=getattr(torch, spec.dtype))
    if isinstance(spec, M):
        rows, cols = torch.meshgrid(torch.arange(spec.grid[0]), torch.arange(spec.grid[1]), indexing="ij")
        ids = torch.zeros(rows.numel(), spec.width)
        ids[:, 1], ids[:, 2] = rows.flatten(), cols.flatten()
        return ids
    if isinstance(spec, list):
        return [_make(s, gen) for s in spec]
    if isinstance(spec, tuple):
        return tuple(_make(s, gen) for s in spec)
    if isinstance(spec, dict):
        return {k: _make(v, gen) for k, v in spec.items()}
    return spec


#: module prefixes of diffusers' denoiser classes (controlnets, VAEs and encoders are not denoisers)
_DENOISER_MODULES = ("diffusers.models.transformers.", "diffusers.models.unets.")
#: denoisers diffusers defines elsewhere (ControlNet-XS is a whole UNet; pipeline-local UNets)
_DENOISERS_ELSEWHERE = ("UNetControlNetXSModel", "AudioLDM2UNet2DConditionModel", "UniDiffuserModel")


def denoiser_classes() -> list[str]:
    """Names of every denoiser model class the installed diffusers exports, enumerated from it."""
    import inspect

    import diffusers
    from diffusers import ModelMixin

    names = []
    for name in dir(diffusers):
        if name.startswith("_"):
            continue
        try:
            cls = getattr(diffusers, name)
        except Exception:  # noqa: BLE001 - an optional dependency is missing: not exported here
            continue
        if not (inspect.isclass(cls) and issubclass(cls, ModelMixin)) or cls is ModelMixin:
            continue
        if cls.__module__.startswith(_DENOISER_MODULES) or name in _DENOISERS_ELSEWHERE:
            names.append(name)
    return sorted(names)


def model_class(name: str) -> type:
    import diffusers

    return getattr(diffusers, name)


def build_tiny_model(name: str, seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(model, inputs)`` of class ``name`` from `TINY` (or a ``Class[variant]`` of `VARIANTS`): random weights
    (seeded), fp32, eval mode."""
    table = VARIANTS if name in VARIANTS else TINY
    if name not in table:
        raise KeyError(f"no tiny config for {name}; known: {', '.join(sorted(TINY))}, {', '.join(sorted(VARIANTS))}")
    config, inputs = table[name]
    torch.manual_seed(seed)
    model = model_class(name.split("[")[0])(**config).eval()
    with torch.no_grad():  # zero-initialised gates and output layers would hide attention from the output
        for param in model.parameters():
            if param.numel() and not bool(param.any()):
                param.normal_(0.0, 0.2)
    return model, _make(inputs, torch.Generator().manual_seed(seed + 1))


def tiny_forward(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """The model's main output tensor for ``inputs`` (no grad)."""
    with torch.no_grad():
        out = model(**inputs, return_dict=False) if _takes_return_dict(model) else model(**inputs)
    while not isinstance(out, torch.Tensor):
        out = out[0] if isinstance(out, tuple | list) else (out.sample if hasattr(out, "sample") else out[0])
    return out


def _takes_return_dict(model: torch.nn.Module) -> bool:
    import inspect

    return "return_dict" in inspect.signature(model.forward).parameters
