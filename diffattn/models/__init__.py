"""Model-family adapters, matched by type; `find_adapter` picks the one serving a denoiser.

``base``: what an adapter knows; ``generic``: the readers most denoisers share (grid from the latent and
patch sizes, position ids, ``img_shapes``, size arguments, UNet levels); ``custom``: families that need
their own reader; ``registry``: which adapter serves which class."""

from .base import FamilyAdapter
from .generic import IdsGridAdapter, LatentGridAdapter, ShapesAdapter, SizeArgsAdapter, UNetGridAdapter
from .registry import ADAPTERS, FAMILIES, REFUSED, family_key, find_adapter, supported_models

__all__ = [
    "ADAPTERS",
    "FAMILIES",
    "REFUSED",
    "FamilyAdapter",
    "IdsGridAdapter",
    "LatentGridAdapter",
    "ShapesAdapter",
    "SizeArgsAdapter",
    "UNetGridAdapter",
    "family_key",
    "find_adapter",
    "supported_models",
]
