"""``dense``: the model's own attention call, routed through the patcher. Proves patching alone
changes nothing (outputs are bit-identical to the unpatched pipeline)."""

from __future__ import annotations

import dataclasses

from .base import AttentionMethod
from .registry import register_method


@dataclasses.dataclass(frozen=True)
class DenseConfig:
    """No knobs."""


@register_method
class Dense(AttentionMethod):
    name = "dense"
    Config = DenseConfig
    passthrough = True
