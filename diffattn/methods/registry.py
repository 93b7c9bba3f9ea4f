"""Method registry: each method module registers itself here; the patcher only looks names up."""

from __future__ import annotations

from .base import AttentionMethod

_METHODS: dict[str, type[AttentionMethod]] = {}


def register_method(cls: type[AttentionMethod]) -> type[AttentionMethod]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is already registered by {_METHODS[cls.name].__qualname__}")
    _METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[AttentionMethod]:
    """The method class registered as ``name``; a ValueError listing known names otherwise."""
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(f"unknown attention method {name!r}; known methods: {', '.join(list_methods())}")
    return _METHODS[name]


def list_methods() -> list[str]:
    """Sorted names of every registered method."""
    return sorted(_METHODS)
