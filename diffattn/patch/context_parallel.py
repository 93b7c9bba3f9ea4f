"""diffusers context parallelism as seen from one intercepted attention call (DESIGN §2a').

Under Ulysses (``ContextParallelConfig(ulysses_degree=N)``) every rank holds a chunk of the
sequence; before attention, diffusers' native backend trades heads for sequence with an all-to-all,
so the SDPA call sees the *whole* sequence with ``H / N`` heads, as the ranks' chunks concatenated
in rank order. An image-only sequence is then in its own order. A joint sequence is not: diffusers
splits text and image separately, so rank ``r`` holds ``[txt_r, img_r]`` and the call sees
``[txt_0, img_0, txt_1, img_1, ...]``. `gathered_order` gives the permutation back to ``[txt, img]``.

How diffusers 0.42.1 splits (hooks/context_parallel.py): ``EquipartitionSharder`` takes
``tensor.chunk(N)`` (it asserts the length divides by N); with ``ulysses_anything=True``,
``PartitionAnythingSharder`` takes ``tensor.tensor_split(N)`` (the first ``n % N`` ranks hold one
token more). Both split along the flattened ring x ulysses mesh, which is the Ulysses group when the
ring degree is 1, the only case supported: ring attention merges partial results with the
log-sum-exp, which diffusers' native backend cannot return, and each rank would see only chunks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Ulysses", "chunk_sizes", "gathered_order", "splits_input", "ulysses_of"]


@dataclasses.dataclass(frozen=True)
class Ulysses:
    """Ulysses context parallelism of one processor.

    degree: ranks in the Ulysses group (N >= 2).
    uneven: ``ulysses_anything``: chunks as ``tensor_split`` cuts them; else ``chunk``'s equal ones.
    """

    degree: int
    uneven: bool = False

    def __post_init__(self) -> None:
        if self.degree < 2:
            raise ValueError(f"Ulysses degree {self.degree} must be >= 2 (1 means no context parallelism)")


def ulysses_of(parallel_config: Any) -> Ulysses | None:
    """The Ulysses setting of a processor's ``_parallel_config`` (a diffusers ``ParallelConfig``,
    or a bare ``ContextParallelConfig``); None without context parallelism.

    Raises ValueError for ``ring_degree > 1``, naming what is supported.
    """
    if parallel_config is None:
        return None
    cp = getattr(parallel_config, "context_parallel_config", parallel_config)
    if cp is None:  # tensor parallelism only: each rank attends over its own heads, unaware
        return None
    ring = getattr(cp, "ring_degree", 1) or 1
    ulysses = getattr(cp, "ulysses_degree", 1) or 1
    if ring > 1:
        raise ValueError(
            f"diffattn does not support ring attention (ContextParallelConfig ring_degree={ring}): ring merges "
            "partial attention with its log-sum-exp, which diffusers' native backend cannot return, and each rank "
            "would attend over chunks only. Supported: Ulysses, ContextParallelConfig(ulysses_degree=N) with "
            "ring_degree=1."
        )
    if ulysses < 2:
        return None
    return Ulysses(degree=int(ulysses), uneven=bool(getattr(cp, "ulysses_anything", False)))


def chunk_sizes(n: int, parts: int, uneven: bool) -> list[int] | None:
    """Lengths of the ``parts`` per-rank chunks of ``n`` tokens as diffusers cuts them, or None if
    ``torch.chunk`` yields fewer than ``parts`` chunks (diffusers would then have failed on a rank).

    uneven=False: ``torch.chunk`` (``ceil(n / parts)`` each, the last ones shorter or missing);
    uneven=True: ``torch.tensor_split`` (the first ``n % parts`` chunks one longer).
    """
    if n < 0 or parts < 1:
        raise ValueError(f"chunk_sizes needs n >= 0 and parts >= 1; got n={n}, parts={parts}")
    if uneven:
        base, extra = divmod(n, parts)
        return [base + (r < extra) for r in range(parts)]
    if n == 0:
        return [0] * parts
    size = math.ceil(n / parts)
    sizes = [min(size, n - r * size) for r in range(parts)]
    return sizes if all(s > 0 for s in sizes) else None


def gathered_order(text_len: int, image_len: int, text_first: bool, ulysses: Ulysses) -> Tensor | None:
    """``perm`` with ``gathered[..., perm, :]`` in the model's own order (``[txt, img]`` if
    ``text_first`` else ``[img, txt]``), where ``gathered`` is the sequence the attention call sees
    after Ulysses' all-to-all: per rank ``r`` its text and image chunks, in the model's order,
    concatenated over ranks. ``argsort(perm)`` maps the result back. None if the chunks cannot be
    recovered (see `chunk_sizes`); the caller then falls back to dense attention.
    """
    txt = chunk_sizes(text_len, ulysses.degree, ulysses.uneven)
    img = chunk_sizes(image_len, ulysses.degree, ulysses.uneven)
    if txt is None or img is None:
        return None
    # position in the gathered sequence of each canonical text / image token
    txt_pos, img_pos = [], []
    offset = 0
    for t, i in zip(txt, img):
        t_range = range(offset, offset + t) if text_first else range(offset + i, offset + i + t)
        i_range = range(offset + t, offset + t + i) if text_first else range(offset, offset + i)
        txt_pos.extend(t_range)
        img_pos.extend(i_range)
        offset += t + i
    order = txt_pos + img_pos if text_first else img_pos + txt_pos
    return torch.tensor(order, dtype=torch.long)


def splits_input(denoiser: nn.Module, name: str) -> bool:
    """Whether diffusers' context parallelism splits the forward argument ``name`` (e.g.
    ``"encoder_hidden_states"``, ``[B, S, C]``) of ``denoiser`` or of one of its submodules along the
    sequence, read from the ``ContextParallelSplitHook``s that ``enable_parallelism`` registered.
    Joint attention then holds ``[txt_r, img_r]`` per rank; otherwise its order is unknown."""
    try:
        from diffusers.hooks.context_parallel import ContextParallelInput, ContextParallelSplitHook
    except ImportError:  # pragma: no cover - diffusers without context parallelism
        return False
    for module in denoiser.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook in getattr(registry, "hooks", {}).values():
            if isinstance(hook, ContextParallelSplitHook):
                plan = hook.metadata.get(name)
                if isinstance(plan, ContextParallelInput) and plan.split_dim == 1 and not plan.split_output:
                    return True
    return False
