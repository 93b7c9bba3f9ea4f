"""What a model-family adapter knows: where self-attention lives and how to read the layout."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ..layout import TokenLayout


class FamilyAdapter:
    """One diffusers denoiser family. Subclasses override the class-level facts and readers."""

    #: family name shown in errors and reports
    name: str = ""
    #: denoiser class names this adapter serves
    class_names: tuple[str, ...] = ()
    #: number of axes of the image token grid
    ndim: int = 2
    #: the denoiser's ``timestep`` times this is in ``scheduler.timesteps`` units (FLUX gets t / 1000)
    timestep_scale: float = 1.0
    #: key of this family in ``diffattn.presets.PRESETS`` (see `family_key`)
    family: str = ""

    def family_key(self, denoiser: nn.Module) -> str:
        """Preset family of ``denoiser``; adapters serving several families override this."""
        return self.family

    def matches(self, denoiser: nn.Module) -> bool:
        return type(denoiser).__name__ in self.class_names

    def is_self_attention(self, name: str, module: nn.Module) -> bool:
        """Default: diffusers marks cross-attention with ``is_cross_attention``; ``attn2`` is the
        cross-attention of every BasicTransformerBlock-style block."""
        return not getattr(module, "is_cross_attention", False) and not name.endswith("attn2")

    def bind(self, denoiser: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The denoiser's forward arguments by name."""
        return inspect.signature(denoiser.forward).bind_partial(*args, **kwargs).arguments

    def read_layout(self, denoiser: nn.Module, call: dict[str, Any]) -> TokenLayout:
        raise NotImplementedError

    def read_timestep(self, call: dict[str, Any]) -> torch.Tensor | None:
        t = call.get("timestep")
        return t if isinstance(t, torch.Tensor) or t is None else torch.as_tensor(t)


def patch_sizes(config: Any) -> tuple[int, int, int]:
    """(temporal, height, width) patch sizes from a denoiser config."""
    p = getattr(config, "patch_size", 1) or 1
    if isinstance(p, list | tuple):
        return tuple(int(x) for x in p)  # type: ignore[return-value]
    pt = getattr(config, "patch_size_t", 1) or 1
    return int(pt), int(p), int(p)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
