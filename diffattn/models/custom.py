"""Adapters for denoisers whose block structure or token packing the generic readers cannot name: which
attention modules attend over the token grid, at which level, and where the grid sits in the sequence
(see `diffattn.models.registry.ADAPTERS`). ``text_position`` says whether text (or other conditioning tokens)
joins the grid in one attention ("prefix"/"suffix") or comes through separate cross-attention ("none"):
methods such as FreeSwim read it; the layouts themselves place the dense tokens exactly."""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

import torch
from torch import nn

from ..layout import LayoutError, ModuleRole, TokenLayout, grid_from_ids
from .base import FamilyAdapter
from .generic import LatentGridAdapter, UNetGridAdapter


class Kandinsky3UNetAdapter(UNetGridAdapter):
    """Kandinsky 3: every attention module is built with a context dimension, so the self-attention is
    told apart by position: ``attentions.0`` of a down block runs first (before the block's closing
    downsample), of an up block last (after the block's opening upsample). Down block ``i`` sits at level
    ``i``; up block ``j`` at ``num_levels - 1 - j``. The other attentions (and ``add_time_condition``)
    attend to the text."""

    def role(self, denoiser: nn.Module, name: str, module: nn.Module) -> ModuleRole | None:
        parts = name.split(".")
        if len(parts) < 4 or parts[0] not in ("down_blocks", "up_blocks") or parts[2:4] != ["attentions", "0"]:
            return None
        index, deepest = int(parts[1]), int(denoiser.num_levels) - 1
        return ModuleRole("self", level=index if parts[0] == "down_blocks" else deepest - index)


class UVit2DAdapter(FamilyAdapter):
    """aMUSEd's U-ViT: ``input_ids`` ``[B, H, W]`` are the token grid. The conv blocks around the
    transformer attend only to the text (both attentions of their SkipFF blocks are cross-attention);
    ``transformer_layers.*.attn1`` is the self-attention, on the grid halved once when
    ``config.downsample`` (a 2x2 stride-2 conv: odd sides do not match the ceil-halved grid and fall back)."""

    def __init__(self, class_names: tuple[str, ...]) -> None:
        self.class_names = class_names

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        ids = call.get("input_ids")
        if not isinstance(ids, torch.Tensor) or ids.dim() != 3:
            raise LayoutError(f"input_ids {getattr(ids, 'shape', ids)} are not a [B, H, W] token grid")
        return TokenLayout(grid=(int(ids.shape[1]), int(ids.shape[2])))

    def role(self, denoiser: nn.Module, name: str, module: nn.Module) -> ModuleRole | None:
        if not (name.startswith("transformer_layers.") and name.endswith(".attn1")):
            return None
        return ModuleRole("self", level=int(bool(denoiser.config.downsample)))


class StableCascadeAdapter(FamilyAdapter):
    """Stable Cascade (Würstchen) UNet: the sample ``[B, C, H, W]`` pixel-unshuffled by ``patch_size``.
    Its attention blocks query the image tokens over the image tokens followed by the CLIP tokens
    (``self_attn``; else pure cross-attention, not patched). Down block ``i`` runs after ``i``
    downscalings (stride 2, floor: odd sides fall back), up block ``u`` at level ``levels - 1 - u``.
    The CLIP tokens: ``clip_seq`` per pooled text embedding, plus the text sequence and ``clip_seq`` per
    image embedding when both are passed (as ``get_clip_embeddings`` builds them)."""

    text_position = "suffix"

    def __init__(self, class_names: tuple[str, ...]) -> None:
        self.class_names = class_names

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        x, pooled = call.get("sample"), call.get("clip_text_pooled")
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not isinstance(pooled, torch.Tensor):
            raise LayoutError("the call has no [B, C, H, W] sample and clip_text_pooled to read the grid from")
        cfg, p = denoiser.config, int(denoiser.config.patch_size)
        seq = lambda t: 1 if t.dim() == 2 else int(t.shape[1])  # noqa: E731
        clip = cfg.clip_seq * seq(pooled)
        txt, img = call.get("clip_text"), call.get("clip_img")
        if isinstance(txt, torch.Tensor) and isinstance(img, torch.Tensor):
            clip += seq(txt) + cfg.clip_seq * seq(img)
        return TokenLayout(grid=(x.shape[2] // p, x.shape[3] // p), text_len=clip, text_position="suffix")

    def role(self, denoiser: nn.Module, name: str, module: nn.Module) -> ModuleRole | None:
        parts = name.split(".")
        if len(parts) != 4 or parts[0] not in ("down_blocks", "up_blocks") or parts[3] != "attention":
            return None
        blocks = getattr(denoiser, parts[0])
        if not getattr(blocks[int(parts[1])][int(parts[2])], "self_attn", False):
            return None  # keys are the CLIP tokens alone
        index = int(parts[1])
        return ModuleRole("self", level=index if parts[0] == "down_blocks" else len(blocks) - 1 - index)


class Kandinsky5Adapter(LatentGridAdapter):
    """Kandinsky 5: the latent ``[B, F, H, W, C]`` over ``patch_size``, visual tokens frame-row-column
    unless the call's ``sparse_params`` ask for the ``to_fractal`` order (8x8 local patches), which is no
    row-major grid: such calls fall back."""

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        sparse = call.get("sparse_params")
        if isinstance(sparse, dict) and sparse.get("to_fractal"):
            raise LayoutError("sparse_params['to_fractal'] orders the visual tokens in 8x8 patches, not row-major")
        return super().read_layout(denoiser, call)


class UniDiffuserAdapter(FamilyAdapter):
    """UniDiffuser's U-ViT: one sequence ``[t_img, t_text, (data_type), text, clip image, vae patches]``;
    the grid is the VAE latent ``latent_image_embeds`` ``[B, C, H, W]`` over ``patch_size``, after the
    dense tokens counted from the call (``prompt_embeds`` and ``image_embeds`` lengths)."""

    text_position = "prefix"

    def __init__(self, class_names: tuple[str, ...]) -> None:
        self.class_names = class_names

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        x, text, clip = (call.get(k) for k in ("latent_image_embeds", "prompt_embeds", "image_embeds"))
        if not all(isinstance(t, torch.Tensor) for t in (x, text, clip)) or x.dim() != 4 or text.dim() != 3:
            raise LayoutError("the call lacks a [B, C, H, W] latent_image_embeds, prompt_embeds or image_embeds")
        p = int(denoiser.config.patch_size)
        grid = (x.shape[2] // p, x.shape[3] // p)
        dense = 2 + int(bool(denoiser.config.use_data_type_embedding)) + text.shape[1] + clip.shape[1]
        return TokenLayout(grid=grid, stream_len=dense + grid[0] * grid[1], grid_offset=dense)


class BriaFibo2Adapter(FamilyAdapter):
    """Bria Fibo 2: the latent ``[B, C, H, W]`` over ``patch_size`` is the grid, at the head of a stream
    that appends the ``context_latents`` (reference images, dense). The noise refiner attends the
    stream alone; the main layers add the Perceiver's gist tokens, ahead of the stream or, when the
    batch pads gist counts, after it. Their count is what the model's own ``compute_gist_count`` makes
    of the text lengths. The Perceiver and the text cross-attention are not patched."""

    text_position = "prefix"
    skip = ("perceiver",)

    def __init__(self, class_names: tuple[str, ...]) -> None:
        self.class_names = class_names

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        x, text = call.get("hidden_states"), call.get("encoder_hidden_states")
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not isinstance(text, torch.Tensor) or text.dim() != 4:
            raise LayoutError("the call lacks a [B, C, H, W] latent or [B, bundles, L, C] encoder_hidden_states")
        cfg, p = denoiser.config, int(denoiser.config.patch_size)
        grid = (x.shape[2] // p, x.shape[3] // p)
        context = [c for c in call.get("context_latents") or [] if isinstance(c, torch.Tensor)]
        stream = grid[0] * grid[1] + sum((c.shape[2] // p) * (c.shape[3] // p) for c in context)
        mask = call.get("encoder_attention_mask")
        lengths = mask.sum(dim=1).tolist() if isinstance(mask, torch.Tensor) else [text.shape[2]] * x.shape[0]
        owner = next(c for c in type(denoiser).__mro__ if c.__name__ in self.class_names)
        gist_count = importlib.import_module(owner.__module__).compute_gist_count
        counts = gist_count(
            lengths,
            min_gist=cfg.min_num_gist_tokens,
            max_gist=cfg.max_num_gist_tokens,
            gist_step=cfg.gist_step,
            min_text_len=cfg.gist_min_text_len,
            max_text_len=cfg.gist_max_text_len,
        )
        position = "prefix" if min(counts) == max(counts) else "suffix"
        return TokenLayout(grid=grid, stream_len=stream, text_len=max(counts), text_position=position)


class ZImageAdapter(FamilyAdapter):
    """Z-Image (basic mode): ``x`` is a list of per-sample latents ``[C, F, H, W]`` patchified by the
    call's ``patch_size`` / ``f_patch_size`` and padded to a multiple of ``SEQ_MULTI_OF`` tokens (the
    pad tokens are extras of the stream); the main layers attend ``[image, caption]`` with the caption
    padded the same way. Samples of different sizes (padded batches with masks) and omni mode (nested
    lists) fall back. The caption and SigLIP refiners are not patched."""

    text_position = "suffix"
    skip = ("context_refiner", "siglip_refiner")

    def __init__(self, class_names: tuple[str, ...]) -> None:
        self.class_names = class_names

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        xs, caps = call.get("x"), call.get("cap_feats")
        if not isinstance(xs, list | tuple) or not xs or not all(isinstance(x, torch.Tensor) for x in xs):
            raise LayoutError("x is not a list of [C, F, H, W] latents (omni mode passes nested lists)")
        if not isinstance(caps, list | tuple) or len(caps) != len(xs):
            raise LayoutError("cap_feats is not one caption per latent")
        multiple = int(importlib.import_module(self._owner(denoiser).__module__).SEQ_MULTI_OF)
        pad = lambda k: k + (-k) % multiple  # noqa: E731
        shapes = {tuple(x.shape) for x in xs}
        lens = {pad(int(c.shape[0])) for c in caps}  # captions padded alike need no mask
        if len(shapes) != 1 or len(lens) != 1 or xs[0].dim() != 4:
            raise LayoutError(f"latents {sorted(shapes)} or padded caption lengths {sorted(lens)} differ in the batch")
        p, pf = int(call.get("patch_size") or 2), int(call.get("f_patch_size") or 1)
        _, f, h, w = xs[0].shape
        grid = (f // pf, h // p, w // p)
        grid = grid[1:] if grid[0] == 1 else grid
        return TokenLayout(grid=grid, stream_len=pad(math.prod(grid)), text_len=lens.pop(), text_position="suffix")

    def _owner(self, denoiser: nn.Module) -> type:
        return next(c for c in type(denoiser).__mro__ if c.__name__ in self.class_names)


class OmniGenAdapter(FamilyAdapter):
    """OmniGen: one sequence ``[condition tokens (input_ids, with input-image patches in place), time
    token, output-image patches]``; the grid is ``hidden_states`` ``[B, C, H, W]`` over ``patch_size``
    at the tail. The condition tokens' causal mask rows stay with them (dense queries)."""

    text_position = "prefix"

    def __init__(self, class_names: tuple[str, ...]) -> None:
        self.class_names = class_names

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        x, ids = call.get("hidden_states"), call.get("input_ids")
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise LayoutError("hidden_states is not a [B, C, H, W] latent")
        p = int(denoiser.config.patch_size)
        grid = (x.shape[2] // p, x.shape[3] // p)
        dense = (int(ids.shape[1]) if isinstance(ids, torch.Tensor) else 0) + 1  # + the time token
        return TokenLayout(grid=grid, stream_len=dense + grid[0] * grid[1], grid_offset=dense)

    def role(self, denoiser: nn.Module, name: str, module: nn.Module) -> ModuleRole | None:
        # built with cross_attention_dim=hidden_size, so is_cross_attention is set, but it attends its own input
        return ModuleRole() if name.startswith("layers.") and name.endswith(".self_attn") else None


History = tuple[tuple[str, str, tuple[int, ...], tuple[int, ...]], ...]


def _history_tokens(call: dict[str, Any], entries: History) -> int:
    """Tokens of the history latents a call packs ahead of the latent grid: each ``(latents, indices,
    pad, kernel)`` entry whose latents ``[B, C, F, H, W]`` and frame indices are both passed is
    replicate-padded to a multiple of ``pad`` and patchified by a stride-``kernel`` 3-D conv."""
    total = 0
    for latents, indices, pad, kernel in entries:
        x = call.get(latents)
        if isinstance(x, torch.Tensor) and call.get(indices) is not None:
            total += math.prod((-(-int(n) // m) * m) // k for n, m, k in zip(x.shape[2:], pad, kernel))
    return total


class FramepackAdapter(LatentGridAdapter):
    """HunyuanVideo Framepack: the latent ``[B, C, F, H, W]`` grid is the tail of a stream that prepends
    the history latents the call passes with their frame indices (packed 4x, 2x, clean; clean patchified
    by ``(1, 2, 2)`` unpadded, 2x by ``(2, 4, 4)`` and 4x by ``(4, 8, 8)`` after padding to a multiple).
    The history tokens are dense extras; text is joined inside the processor (read per call)."""

    _history = (
        ("latents_clean", "indices_latents_clean", (1, 1, 1), (1, 2, 2)),
        ("latents_history_2x", "indices_latents_history_2x", (2, 4, 4), (2, 4, 4)),
        ("latents_history_4x", "indices_latents_history_4x", (4, 8, 8), (4, 8, 8)),
    )

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        layout = super().read_layout(denoiser, call)
        history = _history_tokens(call, self._history)
        return dataclasses.replace(layout, stream_len=history + math.prod(layout.grid), grid_offset=history)


class HeliosAdapter(LatentGridAdapter):
    """Helios: the latent ``[B, C, F, H, W]`` grid is the tail of a stream that prepends the short, mid
    and long history latents (patchified by the patch size unpadded, by twice it after padding to
    ``(2, 4, 4)``, by four times it after padding to ``(4, 8, 8)``). Text is cross-attention. With
    ``is_amplify_history`` the processor rejoins scaled history keys, a concatenation that matches no
    stream piece: such calls fall back."""

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        layout = super().read_layout(denoiser, call)
        p = tuple(int(v) for v in denoiser.config.patch_size)
        entries = (
            ("latents_history_short", "indices_latents_history_short", (1, 1, 1), p),
            ("latents_history_mid", "indices_latents_history_mid", (2, 4, 4), tuple(2 * v for v in p)),
            ("latents_history_long", "indices_latents_history_long", (4, 8, 8), tuple(4 * v for v in p)),
        )
        history = _history_tokens(call, entries)
        return dataclasses.replace(layout, stream_len=history + math.prod(layout.grid), grid_offset=history)


class Krea2Adapter(FamilyAdapter):
    """Krea 2: one sequence ``[text, image]``; ``position_ids`` ``[S, 3]`` hold ``(t, h, w)`` per token of
    both, the text rows first (``encoder_hidden_states`` long), so the image rows give the grid (tokens
    after it in the latent stream are extras). The text-fusion attention is not patched."""

    text_position = "prefix"
    skip = ("text_fusion",)

    def __init__(self, class_names: tuple[str, ...]) -> None:
        self.class_names = class_names

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        ids, x, text = (call.get(k) for k in ("position_ids", "hidden_states", "encoder_hidden_states"))
        if not all(isinstance(t, torch.Tensor) for t in (ids, x, text)) or ids.dim() != 2:
            raise LayoutError("the call lacks [S, 3] position_ids, hidden_states or encoder_hidden_states")
        n_text, stream = int(text.shape[1]), int(x.shape[1])
        if ids.shape[0] != n_text + stream:
            raise LayoutError(f"position_ids hold {ids.shape[0]} rows, not {n_text} text + {stream} image tokens")
        grid, _ = grid_from_ids(ids[n_text:], (1, 2))
        return TokenLayout(grid=grid, stream_len=stream, text_len=n_text, text_position="prefix")


class Ideogram4Adapter(FamilyAdapter):
    """Ideogram 4: a packed row whose ``indicator`` tags each token (text, output image, padding) and
    whose ``position_ids`` ``[B, S, 3]`` hold ``(t, h, w)``. The output-image tokens must be one run,
    the same in every row; their ``(h, w)`` ids give the grid. Every other token (text, padding, other
    packed samples, kept apart by the model's segment mask) is dense."""

    text_position = "prefix"

    def __init__(self, class_names: tuple[str, ...]) -> None:
        self.class_names = class_names

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        ind, ids = call.get("indicator"), call.get("position_ids")
        if not isinstance(ind, torch.Tensor) or not isinstance(ids, torch.Tensor) or ind.dim() != 2:
            raise LayoutError("the call lacks a [B, S] indicator or [B, S, 3] position_ids")
        if not bool((ind == ind[:1]).all()):
            raise LayoutError("the token roles (indicator) differ across the batch")
        image = importlib.import_module(self._owner(denoiser).__module__).OUTPUT_IMAGE_INDICATOR
        at = (ind[0] == image).nonzero().flatten()
        if at.numel() == 0 or int(at[-1]) - int(at[0]) + 1 != at.numel():
            raise LayoutError(f"the {at.numel()} output-image tokens are not one contiguous run")
        start, stop = int(at[0]), int(at[-1]) + 1
        grid, _ = grid_from_ids(ids[:, start:stop], (1, 2))
        if math.prod(grid) != stop - start:
            raise LayoutError(f"the output-image position ids span a grid {grid}, not all {stop - start} image tokens")
        return TokenLayout(grid=grid, stream_len=int(ind.shape[1]), grid_offset=start)

    def _owner(self, denoiser: nn.Module) -> type:
        return next(c for c in type(denoiser).__mro__ if c.__name__ in self.class_names)
