"""``dense``: the model's own attention call, routed through the patcher. Proves patching alone
changes nothing (outputs are bit-identical to the unpatched pipeline)."""

from __future__ import annotations

import dataclasses
import math

from .base import AttentionMethod, FlopBound, pairs_bound
from .registry import register_method


@dataclasses.dataclass(frozen=True)
class DenseConfig:
    """No knobs."""


@register_method
class Dense(AttentionMethod):
    name = "dense"
    Config = DenseConfig
    passthrough = True

    def flop_bound(self, grid: tuple[int, ...], extra_tokens: int = 0) -> FlopBound:
        return pairs_bound(grid, extra_tokens, math.prod(grid) * (math.prod(grid) + extra_tokens), "dense")
