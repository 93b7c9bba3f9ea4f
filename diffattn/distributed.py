"""Data-parallel generation: each process renders its share of the prompts with diffattn applied on
its own copy of the pipeline; `gather_stats` sums the per-process call counts.

Under ``torchrun`` / ``accelerate launch``, ``handle.stats()`` counts only this process's calls.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch.distributed as dist

from .patch import CallStats

#: the CallStats fields that count calls (summed over processes); the others describe the module
COUNTS = ("sparse", "fallback", "dense", "cross", "cross_cached", "cached")

__all__ = ["gather_stats"]


def gather_stats(handle: Any) -> dict[str, CallStats]:
    """Per patched module, the sparse / fallback / dense calls of every process summed.

    A collective: under ``torch.distributed`` every process must call it (each gets the same sums);
    without a process group it is a copy of ``handle.stats()``. ``handle`` is an `AttentionHandle`.
    """
    mine = {name: dataclasses.astuple(s) for name, s in handle.stats().items()}
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)  # what accelerate's gather_object does for lists
    else:
        gathered = [mine]
    total: dict[str, CallStats] = {}
    for stats in gathered:
        for name, values in stats.items():
            s = total.setdefault(name, CallStats())
            for f, value in zip(dataclasses.fields(CallStats), values):
                if f.name in COUNTS:
                    setattr(s, f.name, getattr(s, f.name) + value)
                elif f.name == "paths":  # kernel path -> calls, summed per path
                    for path, calls in value.items():
                        s.paths[path] = s.paths.get(path, 0) + calls
                elif value not in (None, 0) or getattr(s, f.name) is None:  # what a module is: any rank's
                    setattr(s, f.name, value)
    return total
