"""The processor objects installed on attention modules: callable shells around a `_PatchedAttention`
that look like the original processor to diffusers (DESIGN §2a.3)."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any

from torch import nn


def make_wrapper(patched: Any) -> Any:
    """A processor object that runs ``patched``, keeps the original ``__call__`` signature (diffusers
    filters kwargs by it) and is an ``nn.Module`` sharing the original's weights when the original
    is one (IP-Adapter), so state_dict keys and ``.to()`` see the very same tensors."""
    original = patched.original
    signature = inspect.signature(original.__call__)

    def call(*args: Any, **kwargs: Any) -> Any:
        return patched.run(*args, **kwargs)

    call.__signature__ = signature  # type: ignore[attr-defined]
    if isinstance(original, nn.Module):
        wrapper: Any = _ModuleWrapper(original, call)
    else:
        wrapper = _PlainWrapper()
    object.__setattr__(wrapper, "__call__", call)  # what inspect.signature(processor.__call__) finds
    object.__setattr__(wrapper, "diffattn_patch", patched)
    for attr in ("_attention_backend", "_parallel_config"):
        if hasattr(original, attr):
            object.__setattr__(wrapper, attr, getattr(original, attr))
    return wrapper


def _reduce_to_original(wrapper: Any) -> tuple:
    """Pickling or deep-copying a patched module stores the *original* processor, so saved or copied
    pipelines never carry diffattn objects. ``itemgetter(0)((x,))`` is ``x`` itself (pickle memoizes
    it, so a processor shared by many modules stays shared) and needs no diffattn at load time."""
    return operator.itemgetter(0), ((wrapper.diffattn_patch.original,),)


class _PlainWrapper:
    """Shell for plain-object processors; ``__call__`` is set per instance."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["__call__"](*args, **kwargs)

    def __reduce_ex__(self, protocol: object) -> tuple:
        return _reduce_to_original(self)

    def __repr__(self) -> str:
        return f"diffattn({self.__dict__['diffattn_patch'].original!r})"


class _ModuleWrapper(nn.Module):
    """Shell for ``nn.Module`` processors: shares the original's parameter, buffer and child dicts."""

    def __init__(self, original: nn.Module, call: Callable[..., Any]) -> None:
        super().__init__()
        self._parameters = original._parameters
        self._buffers = original._buffers
        self._modules = original._modules
        object.__setattr__(self, "_diffattn_call", call)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._diffattn_call(*args, **kwargs)

    def __reduce_ex__(self, protocol: object) -> tuple:
        return _reduce_to_original(self)
