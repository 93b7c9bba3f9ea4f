"""Install and remove attention methods on diffusers denoisers. Nothing else.

How (DESIGN §2a): a forward pre-hook on the denoiser records the token layout, step and CFG branch
of each call (`runtime`); every selected attention module gets a wrapper processor that delegates to
the original one (`processors`) and, for self-attention, intercepts the single SDPA call to route it to
the method (`intercept`). Every change is an undo record (`records`) applied all or nothing by an
`AttentionHandle` (`install`); `select` decides what is patched, `api` puts it together.
"""

from ..models.denoisers import DENOISER_ATTRS, denoisers_of
from .api import apply_attention, attention, remove_attention
from .install import _ACTIVE as _ACTIVE  # noqa: F401  (tests and tools look the active handle up here)
from .install import AttentionHandle
from .records import ForwardHook, ForwardPreHook, ProcessorSwap, SetAttr, SwapSubmodule, UndoRecord
from .runtime import CallStats
from .select import LayerSpec, StepFraction, StepSpec

__all__ = [
    "DENOISER_ATTRS",
    "AttentionHandle",
    "CallStats",
    "ForwardHook",
    "ForwardPreHook",
    "LayerSpec",
    "ProcessorSwap",
    "SetAttr",
    "StepFraction",
    "StepSpec",
    "SwapSubmodule",
    "UndoRecord",
    "apply_attention",
    "attention",
    "denoisers_of",
    "remove_attention",
]
