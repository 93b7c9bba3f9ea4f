"""Generic adapters: the grid read from the latent shape and the config's patch sizes, from position
ids, from ``img_shapes``, or from explicit size arguments; one instance per group of classes (see
`diffattn.models.ADAPTERS`). Where the dense tokens (text, references, registers) sit in a joint
sequence is read per call from the concatenation the processor does, else from ``text_position``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from ..layout import LayoutError, ModuleRole, TextPosition, TokenLayout, grids_from_ids
from .base import FamilyAdapter, ceil_div, patch_sizes, text_len

Axes = Literal["chw", "cfhw", "fchw", "fhwc", "cl", "lc"]


class _Configured(FamilyAdapter):
    """Class attributes may be overridden per instance by keyword arguments."""

    text_position: TextPosition = "none"
    text_arg: str = "encoder_hidden_states"

    def __init__(self, class_names: tuple[str, ...], **facts: Any) -> None:
        self.class_names = class_names
        for key, value in facts.items():
            if not hasattr(self, key):
                raise TypeError(f"{type(self).__name__} has no fact {key!r}")
            setattr(self, key, value)

    def _layout(self, call: dict[str, Any], grid: tuple[int, ...], **kw: Any) -> TokenLayout:
        return TokenLayout(grid=grid, text_len=text_len(call, self.text_arg), text_position=self.text_position, **kw)


class LatentGridAdapter(_Configured):
    """The latent ``call[latent_arg]`` laid out as ``axes`` (``chw`` = [B, C, H, W], ``cfhw`` =
    [B, C, F, H, W], ``fchw`` = [B, F, C, H, W], ``fhwc`` = [B, F, H, W, C], ``cl`` = [B, C, L] audio,
    ``lc`` = [B, L, C]),
    divided by the config's patch sizes. ``stream_prefix`` tokens (a timestep or memory tokens; an int
    or the name of the config field holding it) are prepended to the latent tokens inside the denoiser."""

    latent_arg: str = "hidden_states"
    axes: Axes = "chw"
    stream_prefix: int | str = 0
    #: video models whose spatial attention runs per frame (Latte): the grid is (H, W), the frames go
    #: to the temporal attention's 1-D grid
    per_frame: bool = False

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        x = call[self.latent_arg]
        if not isinstance(x, torch.Tensor):
            raise LayoutError(f"{self.latent_arg} is a {type(x).__name__}, not a latent tensor")
        pt, ph, pw = patch_sizes(denoiser.config)
        need = {"chw": 4, "cfhw": 5, "fchw": 5, "fhwc": 5, "cl": 3, "lc": 3}[self.axes]
        if x.dim() != need:
            raise LayoutError(f"{self.latent_arg} of shape {tuple(x.shape)} is not {need}-D ({self.axes})")
        if self.axes == "chw":
            grid: tuple[int, ...] = (ceil_div(x.shape[2], ph), ceil_div(x.shape[3], pw))
        elif self.axes in ("cfhw", "fchw"):
            f = x.shape[2] if self.axes == "cfhw" else x.shape[1]
            grid = (ceil_div(f, pt), ceil_div(x.shape[-2], ph), ceil_div(x.shape[-1], pw))
            if self.per_frame:
                return self._layout(call, grid[1:], frames=grid[0])
        elif self.axes == "fhwc":
            grid = (ceil_div(x.shape[1], pt), ceil_div(x.shape[2], ph), ceil_div(x.shape[3], pw))
        else:
            grid = (ceil_div(x.shape[2] if self.axes == "cl" else x.shape[1], ph if ph > 1 else 1),)
        n = math.prod(grid)
        prefix = self.stream_prefix
        prefix = int(getattr(denoiser.config, prefix) or 0) if isinstance(prefix, str) else prefix
        return self._layout(call, grid, stream_len=n + prefix if prefix else None, grid_offset=prefix)


class IdsGridAdapter(_Configured):
    """Packed-token models: the grid from position ids ``call[ids_arg]`` (``[S, K]`` or ``[B, S, K]``)
    whose columns ``spatial`` hold each token's (frame,) row, column (`grids_from_ids`: the target grid, ahead
    of or after reference images, which get grids of their own where their ids form one); the tokens of
    ``extra_ids_args`` (reference images passed separately, packed after the latent tokens inside the
    denoiser) are reference grids too where their ids form them. Everything else in the stream is dense."""

    ids_arg: str = "img_ids"
    spatial: tuple[int, ...] = (1, 2)
    extra_ids_args: tuple[str, ...] = ()

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        ids = call.get(self.ids_arg)
        if not isinstance(ids, torch.Tensor):
            raise LayoutError(f"the call has no position ids {self.ids_arg!r} to read the token grid from")
        found = grids_from_ids(ids, self.spatial)
        refs, stream = list(found.refs), int(ids.shape[-2])
        for arg in self.extra_ids_args:
            extra = call.get(arg)
            if not isinstance(extra, torch.Tensor):
                continue
            try:  # a reference whose ids form no grid stays dense
                more = grids_from_ids(extra, self.spatial)
            except LayoutError:
                more = None
            grids = ((more.offset, more.grid), *more.refs) if more is not None else ()
            refs += [(stream + o, g) for o, g in grids if len(g) == len(found.grid)]
            stream += int(extra.shape[-2])
        return self._layout(call, found.grid, stream_len=stream, grid_offset=found.offset, refs=tuple(refs))


class ShapesAdapter(_Configured):
    """Qwen-Image style: ``call[shapes_arg]`` lists per sample ``[(F, H, W), ...]`` in latent-token
    units; the first entry is the target grid, later entries (edit references) are extras. With
    ``stream_arg`` the stream is that argument's sequence length (a batch padded to its longest sample)."""

    shapes_arg: str = "img_shapes"
    stream_arg: str = ""

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        shapes = call.get(self.shapes_arg)
        if not shapes:
            raise LayoutError(f"the call has no {self.shapes_arg!r} to read the token grid from")
        per_sample = shapes if isinstance(shapes[0], list | tuple) and isinstance(shapes[0][0], list | tuple) else [
            shapes
        ]
        if any(list(s) != list(per_sample[0]) for s in per_sample):
            raise LayoutError(f"{self.shapes_arg} differ across the batch: {shapes}")
        entries = [tuple(int(v) for v in e) for e in per_sample[0]]
        f, h, w = entries[0]
        grid = (h, w) if f == 1 else (f, h, w)
        refs, at = [], math.prod(entries[0])
        for ef, eh, ew in entries[1:]:  # edit references: grids of their own, with the target's axes
            ref = (eh, ew) if len(grid) == 2 and ef == 1 else (ef, eh, ew)
            if len(ref) == len(grid):
                refs.append((at, ref))
            at += ef * eh * ew
        stream = at
        if self.stream_arg:
            stream = int(call[self.stream_arg].shape[1])
        return self._layout(call, grid, stream_len=stream, refs=tuple(refs))


class SizeArgsAdapter(_Configured):
    """LTX style: the call passes the latent sizes (``num_frames``, ``height``, ``width``) in
    latent units; the config's patch sizes divide them."""

    size_args: tuple[str, ...] = ("num_frames", "height", "width")

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        pt, ph, pw = patch_sizes(denoiser.config)
        missing = [a for a in self.size_args if call.get(a) is None]
        if missing:
            raise LayoutError(f"the call does not pass {missing}, which give the token grid")
        f, h, w = (int(call[a]) for a in self.size_args)
        return self._layout(call, (ceil_div(f, pt), ceil_div(h, ph), ceil_div(w, pw)))


class UNetGridAdapter(_Configured):
    """UNets: the sample ``[B, C, H, W]`` (or ``[B, C, F, H, W]`` for video UNets, whose spatial
    attention runs per frame); a module's level is the number of downsamplings before its block.
    Temporal attention (motion modules) is a 1-D grid over the frames."""

    latent_arg: str = "sample"
    axes: Literal["chw", "cfhw", "fchw"] = "chw"
    temporal_marks: tuple[str, ...] = (
        "motion_modules",
        "temp_attentions",
        "temporal_transformer_blocks",
        "transformer_in",
        "image_latents_temporal_encoder",  # I2VGen-XL: over the frames of the conditioning image latents
    )

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        x = call[self.latent_arg]
        frames = 1
        if self.axes == "cfhw":
            frames = x.shape[2]
        elif self.axes == "fchw":
            frames = x.shape[1]
        return TokenLayout(grid=(int(x.shape[-2]), int(x.shape[-1])), frames=int(frames), multiscale=True)

    def role(self, denoiser: nn.Module, name: str, module: nn.Module) -> ModuleRole | None:
        role = super().role(denoiser, name, module)
        if role is None or role.kind == "temporal":
            return role
        return ModuleRole("self", level=unet_level(denoiser, name))


def _has(block: nn.Module, attr: str) -> bool:
    """Whether ``block`` has a non-empty ``*{attr}`` (ControlNet-XS names them ``base_downsamplers``)."""
    return any(k.endswith(attr) and v is not None for k, v in vars(block).get("_modules", {}).items())


def _downsamples(block: nn.Module) -> bool:
    """Whether a down block halves the hidden states: ``downsamplers``, or the NCSN++ skip blocks' strided
    ``resnet_down`` (their ``downsamplers`` is the FIR filter of the skip path, present alike)."""
    return _has(block, "downsamplers") or _has(block, "resnet_down")


def _upsamples(block: nn.Module) -> bool:
    """Whether an up block doubles the hidden states: ``upsamplers``, or the NCSN++ skip blocks' ``resnet_up``
    (their singular ``upsampler`` upsamples the skip path only, and sits in the last block too)."""
    return _has(block, "upsamplers") or _has(block, "resnet_up")


def unet_level(denoiser: nn.Module, name: str) -> int:
    """How many times the latent was downsampled before module ``name``'s block: down block ``i``
    follows the downsamplings of blocks ``< i``; the mid block all of them; up block ``j`` follows the
    upsamplings of up blocks ``< j`` (a block's own resampling comes after its attentions)."""
    parts = name.split(".")
    down = list(getattr(denoiser, "down_blocks", []))
    total = sum(_downsamples(b) for b in down)
    if parts[0] == "down_blocks":
        return sum(_downsamples(b) for b in down[: int(parts[1])])
    if parts[0] == "up_blocks":
        up = list(denoiser.up_blocks)
        return max(total - sum(_upsamples(b) for b in up[: int(parts[1])]), 0)
    if parts[0] in ("mid_block", "mid_blocks"):
        return total
    raise LayoutError(f"attention module {name} sits in no down, mid or up block")
