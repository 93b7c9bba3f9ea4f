"""Attention methods. Importing this package registers every shipped method."""

from . import agent, dense, gna, msw, proxy  # noqa: F401  (registration side effect)
from .base import AttendCall, AttentionMethod
from .lifecycle import Branch, DenoiserCall, ModuleCall
from .registry import get_method, list_methods, register_method

__all__ = [
    "AttendCall",
    "AttentionMethod",
    "Branch",
    "DenoiserCall",
    "ModuleCall",
    "get_method",
    "list_methods",
    "register_method",
]
