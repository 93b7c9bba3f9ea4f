"""What a model-family adapter knows: which attention modules to patch (and their role), and how to
read one call's token layout from the denoiser's arguments and config."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ..layout import LayoutError, ModuleRole, TokenLayout


class FamilyAdapter:
    """One group of diffusers denoisers. Subclasses override the class-level facts and readers.

    Adapters match by type: a denoiser matches when a class of its MRO that diffusers defines is named
    in ``class_names``, so user subclasses of a supported class are served too.
    """

    #: diffusers denoiser class names this adapter serves (matched along the MRO)
    class_names: tuple[str, ...] = ()
    #: number of axes of the token grid of self-attention
    ndim: int = 2
    #: the denoiser's ``timestep`` times this is in ``scheduler.timesteps`` units (FLUX gets t / 1000)
    timestep_scale: float = 1.0
    #: key of this family in ``diffattn.patch.presets.PRESETS`` (see `family_key`); "" = no presets
    family: str = ""
    #: module-name substrings whose attention is never patched (text-only refiners, context blocks)
    skip: tuple[str, ...] = ()
    #: module-name substrings marking temporal attention (over the frames of one position): 1-D, kept dense
    temporal_marks: tuple[str, ...] = ()
    #: module-name substrings of blocks attending over the target grid alone (not the packed latent stream)
    grid_only_marks: tuple[str, ...] = ()
    #: ``attn2`` is the cross-attention of BasicTransformerBlock-style blocks (SD3.5's is self-attention)
    attn2_is_cross: bool = True
    #: where text joins the grid's self-attention ("prefix" / "suffix"), or "none": separate cross-attention
    text_position: str = "none"

    def family_key(self, denoiser: nn.Module) -> str:
        """Preset family of ``denoiser``; adapters serving several families override this."""
        return self.family or "dit"

    def match_depth(self, denoiser: nn.Module) -> int | None:
        """Position in ``type(denoiser).__mro__`` of the first diffusers class this adapter serves
        (0 = the class itself), None if none: the most specific adapter wins."""
        for depth, cls in enumerate(type(denoiser).__mro__):
            if cls.__name__ in self.class_names and cls.__module__.startswith("diffusers."):
                return depth
        return None

    def role(self, denoiser: nn.Module, name: str, module: nn.Module) -> ModuleRole | None:
        """The role of attention module ``name``, None if it is not patched (cross-attention,
        text-only attention, temporal attention)."""
        if any(s in name for s in self.skip):
            return None
        if getattr(module, "is_cross_attention", False) or name.endswith(("cross_attn", "cross_attention")):
            return None
        if self.attn2_is_cross and name.endswith("attn2"):
            return None
        if any(m in name for m in self.temporal_marks):
            return ModuleRole("temporal")
        return ModuleRole(grid_only=any(m in name for m in self.grid_only_marks))

    def bind(self, denoiser: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The denoiser's forward arguments by name."""
        return inspect.signature(denoiser.forward).bind_partial(*args, **kwargs).arguments

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        """The token layout of this call; a LayoutError (or KeyError, TypeError) when the call does
        not give one."""
        raise NotImplementedError

    def read_timestep(self, call: dict[str, Any]) -> torch.Tensor | None:
        t = call.get("timestep")
        return t if isinstance(t, torch.Tensor) or t is None else torch.as_tensor(t)


def patch_sizes(config: Any) -> tuple[int, int, int]:
    """(temporal, height, width) patch sizes from a denoiser config (``patch_size`` int or tuple,
    ``patch_size_t``)."""
    p = getattr(config, "patch_size", None) or 1
    if isinstance(p, list | tuple):
        p = tuple(int(x) for x in p)
        if len(p) == 3:
            return p  # type: ignore[return-value]
        if len(p) == 2:
            return 1, p[0], p[1]
        raise LayoutError(f"config.patch_size={p} is neither an int nor a 2- or 3-tuple")
    pt = getattr(config, "patch_size_t", None) or 1
    return int(pt), int(p), int(p)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def text_len(call: dict[str, Any], key: str = "encoder_hidden_states") -> int:
    """Sequence length of the text the denoiser received (0 if none); lists (several encoders) sum."""
    text = call.get(key)
    if isinstance(text, torch.Tensor):
        return int(text.shape[1]) if text.dim() >= 3 else 0
    if isinstance(text, list | tuple):
        return sum(int(t.shape[1]) for t in text if isinstance(t, torch.Tensor) and t.dim() >= 3)
    return 0
