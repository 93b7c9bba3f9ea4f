"""The split of one attention call's sequence into the token grid and the dense tokens (text,
reference images, registers) (layout, issue 10): how the processor joined its pieces (`seq_cat`),
which rows are which (`split_of`), and masks that only pad keys (`key_padding`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..layout import ModuleRole, TokenSplit

if TYPE_CHECKING:
    from .runtime import _Runtime

#: (total length, piece lengths) of one sequence-axis ``torch.cat``
SeqCat = tuple[int, tuple[int, ...]]


def seq_cat(args: tuple, kwargs: dict[str, Any], out: Any) -> SeqCat | None:
    """The lengths of a sequence-axis ``torch.cat`` of ``[B, S, H, D]`` / ``[B, H, S, D]`` / ``[B, S, C]``
    pieces (a joint processor joining text and image q/k/v); None for any other concatenation."""
    pieces = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not isinstance(out, Tensor) or out.dim() < 3 or not isinstance(pieces, list | tuple) or len(pieces) < 2:
        return None
    dim = dim % out.dim()
    if dim in (0, out.dim() - 1):
        return None
    return out.shape[dim], tuple(int(t.shape[dim]) for t in pieces)


def split_of(rt: _Runtime, role: ModuleRole, cats: Sequence[SeqCat], seq: int) -> TokenSplit | str:
    """The grid / dense split of ``seq`` keys for a module of ``role`` in this call, or why there is none.
    The last concatenation to ``seq`` tokens tells the pieces; a joint module's dense placement is
    remembered for the later modules of the same call."""
    layout = rt.layout
    if layout is None:
        return rt.why
    segments = next((pieces for total, pieces in reversed(cats) if total == seq), None)
    split = layout.split(seq, role, segments, getattr(rt.local, "observed", None))
    if isinstance(split, TokenSplit) and split.joint is not None:
        rt.local.observed = split.joint
    return split


def keys_only_rows(cats: Sequence[SeqCat], seq: int, queries: int, image: slice) -> slice | None:
    """The rows of ``seq`` keys that have no query when ``queries`` < ``seq`` (FLUX.2's KV modes: the reference
    tokens, attended apart or cached, join the keys only): the one piece of the keys' concatenation that is
    ``seq - queries`` long and outside the grid; None if there is no such piece, or more than one."""
    pieces = next((p for total, p in reversed(cats) if total == seq), None)
    if pieces is None:
        return None
    found, at = [], 0
    for n in pieces:
        if n == seq - queries and (at + n <= image.start or at >= image.stop):
            found.append(slice(at, at + n))
        at += n
    return found[0] if len(found) == 1 else None


def dense_part(t: Tensor, axis: int, dense: tuple[slice, ...]) -> Tensor:
    """The dense tokens (text, references) of ``t`` along ``axis``, in order."""
    parts = [t.narrow(axis, s.start, s.stop - s.start) for s in dense]
    return parts[0] if len(parts) == 1 else torch.cat(parts, axis)


def key_padding(mask: Tensor | None, batch: int, seq: int, img: slice | None = None) -> Tensor | None | bool:
    """``[B, S]`` bool validity of keys if ``mask`` only pads keys (for the queries ``img``: a per-query
    mask whose image rows, over all heads, are equal counts too); None if no mask; False if the mask is
    of another kind (differing rows, soft biases)."""
    if mask is None:
        return None
    if mask.shape[-1] != seq:
        return False
    if img is not None and mask.dim() >= 2 and mask.shape[-2] == seq and seq > 1:
        rows = mask.reshape(mask.shape[0] if mask.dim() > 2 else 1, -1, seq, seq)[:, :, img]  # [B|1, H|1, S_img, S]
        if not bool((rows == rows[:, :1, :1]).all()):
            return False
        mask = rows[:, 0, 0]  # [B|1, S]
    if mask.numel() not in (seq, batch * seq):
        return False
    flat = mask.reshape(-1, seq).expand(batch, seq)
    if flat.dtype == torch.bool:
        return flat
    valid = flat == 0
    if not bool((flat[~valid] <= -1e4).all()):
        return False
    return valid
