"""``dense``: the model's own attention call, routed through the patcher. Proves patching alone
changes nothing (outputs are bit-identical to the unpatched pipeline)."""

from __future__ import annotations

import dataclasses
import math

from torch import Tensor

from ..kernels import merge_attention
from .base import AttendCall, AttentionMethod, FlopBound, pairs_bound
from .naive import masked_attention
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
    def attend(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        """Plain softmax attention over image + extra keys (what the patcher's passthrough leaves to the model)."""
        parts = [call.backend.dense(q, k, v, scale=call.scale)]
        if call.extra_k is not None and call.extra_v is not None:
            parts.append(call.backend.extra(q, call.extra_k, call.extra_v, call.extra_mask, call.scale))
        return merge_attention(parts)[0]

    def oracle(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        return masked_attention(q, k, v, None, (call.extra_k, call.extra_v, call.extra_mask), call.scale)

    @classmethod
    def dense_limit(cls, grid: tuple[int, ...]) -> DenseConfig:
        return DenseConfig()
