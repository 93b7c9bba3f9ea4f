"""Adapters for denoisers whose block structure the generic readers cannot name: which attention
modules attend over the token grid, and at which level (see `diffattn.models.ADAPTERS`)."""

from __future__ import annotations

from torch import nn

from ..layout import ModuleRole
from .generic import UNetGridAdapter


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
