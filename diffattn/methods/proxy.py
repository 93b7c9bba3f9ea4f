"""Proxy-token attention: a training-free adaptation of PT-DiT (Qihoo-T2X).

PT-DiT compresses each spatial(-temporal) window into one proxy token, lets the proxies carry the
global interaction and recovers local detail with window attention. Without training, we keep the
model's own attention and only change *which keys* each image query sees:

  - the grid is cut into non-overlapping windows (``window`` per axis, clamped to the grid);
  - each query attends exactly to the tokens of its own window,
  - plus one proxy key/value of every OTHER window, with logit bias ``log(tokens in that window)``:
    a proxy then stands in for its whole window's attention mass (ToMe's proportional attention;
    with 1-token windows the method is exactly dense attention);
  - plus every text key of joint attention (``call.extra_k``), as in every method.

Windows on an axis of length ``L`` with window ``w``: ``[0, w), [w, 2w), ...``; the last window
holds the ``L mod w`` remaining tokens when ``w`` does not divide ``L`` (windows never overlap and
every token belongs to exactly one). With ``shift=True``, odd ``call.layer_index`` shift the
partition by ``w // 2`` (Swin's alternation, without the cyclic roll): ``[0, w//2), [w//2,
w//2 + w), ...``, so the first and last windows of that axis are smaller. Axes the window covers
are never shifted.

The proxy of a window is the mean of its keys and of its values (``proxy="mean"``), or the
key/value of one token drawn uniformly inside the window (``proxy="sample"``, PT-DiT's random
proxy), drawn from a generator seeded by ``(seed, call.layer, call.timestep)`` so reruns reproduce.

Computation (no ``S x S`` tensor): the local part is block-sparse attention over a plan whose
tiles are the windows (dense text keys merged in by the kernel); the proxy part is one dense
attention over the ``n_windows`` proxies with an ``[S, n_windows]`` bias (``-inf`` on each query's
own window); both are merged by log-sum-exp in `kernels.merge.merge_attention`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from torch import Tensor

from ..kernels import AxisTiling, BlockPlan, dense_attention, merge_attention
from .base import AttendCall, AttentionMethod, FlopBound, axis_ints, call_generator, pairs_bound, per_axis
from .naive import proxy_attention
from .registry import register_method

PROXY_KINDS = ("mean", "sample")


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    """Proxy-attention knobs.

    window: window size per axis (int = every axis), >= 1; clamped to the grid.
    proxy: ``"mean"`` (window mean of keys and values) or ``"sample"`` (one seeded random token).
    shift: shift the windows by half a window on odd patched layers (``call.layer_index``).
    seed: seed of the ``"sample"`` proxies (combined with the layer name and the timestep).
    """

    window: int | tuple[int, ...] = 16
    proxy: str = "mean"
    shift: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        w = axis_ints("window", self.window)
        object.__setattr__(self, "window", w if len(w) > 1 else w[0])
        if self.proxy not in PROXY_KINDS:
            raise ValueError(f"proxy={self.proxy!r} is not one of {PROXY_KINDS}")
        if not isinstance(self.shift, bool):
            raise TypeError(f"shift={self.shift!r} must be a bool (True or False)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be an int >= 0")

    @property
    def ndim(self) -> int | None:
        return len(self.window) if isinstance(self.window, tuple) else None

    def resolve(self, grid: tuple[int, ...]) -> tuple[int, ...]:
        """Window per axis of ``grid``, clamped to the grid."""
        w = per_axis("window", axis_ints("window", self.window), len(grid))
        return tuple(min(wi, length) for wi, length in zip(w, grid))


def axis_windows(length: int, window: int, shifted: bool) -> list[range]:
    """The windows (token ranges) of one axis; see the module docstring for the definition."""
    offset = window // 2 if shifted and window < length else 0
    starts = ([0] if offset else []) + list(range(offset, length, window))
    ends = starts[1:] + [length]
    return [range(a, b) for a, b in zip(starts, ends)]


@dataclasses.dataclass(frozen=True, eq=False)
class ProxyLayout:
    """The windows of one grid, as data.

    plan: block plan whose tiles are the windows (each window attends itself).
    window_id: ``[N]`` int64, the window of each token (grid order).
    counts: ``[W]`` int64, tokens per window.
    order: ``[N]`` int64, tokens sorted by window (stable), ``starts`` ``[W]`` where each window begins in it.
    bias: ``[1, 1, N, W]`` fp32 logit bias of the proxy keys: ``log(counts)``, ``-inf`` on the own window.
    """

    plan: BlockPlan
    window_id: Tensor
    counts: Tensor
    order: Tensor
    starts: Tensor
    bias: Tensor

    @property
    def num_windows(self) -> int:
        return self.counts.shape[0]


@functools.lru_cache(maxsize=16)
def proxy_layout(grid: tuple[int, ...], window: tuple[int, ...], shifted: bool) -> ProxyLayout:
    """Windows of ``grid`` for resolved (clamped) ``window``. Cached per shape (a small cache: the
    ``[N, W]`` bias grows as ``N^2 / window``; two layouts, plain and shifted, per UNet level)."""
    per_axis = [axis_windows(length, w, shifted) for length, w in zip(grid, window)]
    plan = BlockPlan.from_axes(
        tuple(
            AxisTiling.from_lists(length, [(list(r), list(r), None) for r in wins])
            for length, wins in zip(grid, per_axis)
        )
    )
    window_id = torch.zeros((1,), dtype=torch.long)
    counts = torch.ones((1,), dtype=torch.long)
    for wins in per_axis:
        ids = torch.cat([torch.full((len(r),), i, dtype=torch.long) for i, r in enumerate(wins)])
        sizes = torch.tensor([len(r) for r in wins], dtype=torch.long)
        window_id = (window_id[:, None] * len(wins) + ids[None, :]).reshape(-1)
        counts = (counts[:, None] * sizes[None, :]).reshape(-1)
    order = torch.argsort(window_id, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    n, w = window_id.shape[0], counts.shape[0]
    bias = torch.log(counts.float()).expand(n, w).clone()
    bias[torch.arange(n), window_id] = float("-inf")
    return ProxyLayout(plan, window_id, counts, order, starts, bias[None, None])


def sampled_tokens(layout: ProxyLayout, generator: torch.Generator) -> Tensor:
    """``[W]`` int64: one token drawn uniformly inside each window."""
    u = torch.rand(layout.num_windows, generator=generator, dtype=torch.float64)
    offset = (u * layout.counts).long().clamp_max(layout.counts - 1)
    return layout.order[layout.starts + offset]


def window_means(x: Tensor, layout: ProxyLayout) -> Tensor:
    """``[B, W, H, D]`` mean of ``x [B, S, H, D]`` over each window (accumulated in fp32)."""
    b, s, h, d = x.shape
    sums = torch.zeros(b, layout.num_windows, h, d, dtype=torch.float32, device=x.device)
    ids = layout.window_id.to(x.device)
    # upcast ~4 MB at a time: one whole fp32 copy of a bf16 x costs 5x the sums in page faults
    rows = max(1, (4 << 20) // (4 * b * h * d))
    for start in range(0, s, rows):
        sums.index_add_(1, ids[start : start + rows], x[:, start : start + rows].float())
    return (sums / layout.counts.to(x.device)[None, :, None, None]).to(x.dtype)


@register_method
class ProxyAttention(AttentionMethod):
    """Own window exactly + one log-count-biased proxy per other window (+ text keys)."""

    name = "proxy"
    Config = ProxyConfig

    def flop_bound(self, grid: tuple[int, ...], extra_tokens: int = 0) -> FlopBound:
        """Each query scores its own window exactly and one proxy per window (none when one window
        covers the grid: then it is exactly dense)."""
        grid = tuple(grid)
        windows = self.layout(grid).num_windows
        window = math.prod(self.config.resolve(grid))
        if windows == 1:
            return pairs_bound(grid, extra_tokens, math.prod(grid) * (window + extra_tokens), "dense (one window)")
        pairs = math.prod(grid) * (window + windows + extra_tokens)
        return pairs_bound(grid, extra_tokens, pairs, f"N / (window {window} + windows {windows})")
    example_knobs = {"window": 2, "shift": True}
    invalid_knobs = (
        ({"window": 0}, ValueError, r"window=0 must be >= 1"),
        ({"window": (2, 2, 2, 2)}, ValueError, r"1 to 3 ints"),
        ({"window": 2.5}, TypeError, r"must hold ints"),
        ({"proxy": "max"}, ValueError, r"proxy='max' is not one of \('mean', 'sample'\)"),
        ({"shift": 1}, TypeError, r"shift=1 must be a bool"),
        ({"seed": -1}, ValueError, r"seed=-1 must be an int >= 0"),
        ({"windw": 2}, TypeError, r"unknown knob\(s\) \['windw'\]"),
    )

    def layout(self, grid: tuple[int, ...], layer_index: int = 0) -> ProxyLayout:
        """Windows used for ``grid`` at patched layer ``layer_index`` (odd layers shift if enabled)."""
        grid = tuple(grid)
        shifted = self.config.shift and layer_index % 2 == 1
        return proxy_layout(grid, self.config.resolve(grid), shifted)

    def proxies(self, k: Tensor, v: Tensor, layout: ProxyLayout, call: AttendCall) -> tuple[Tensor, Tensor]:
        """Proxy keys and values ``[B, W, H, D]`` of every window."""
        if self.config.proxy == "mean":
            return window_means(k, layout), window_means(v, layout)
        idx = sampled_tokens(layout, call_generator(self.config.seed, call.layer, call.timestep)).to(k.device)
        return k.index_select(1, idx), v.index_select(1, idx)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        layout = self.layout(call.grid, call.layer_index)
        if q.shape[1] != math.prod(call.grid):
            raise ValueError(f"sequence length {q.shape[1]} does not match the grid {call.grid}")
        local = self.plan_attention(q, k, v, layout.plan, call, return_lse=True)
        assert isinstance(local, tuple)
        if layout.num_windows == 1:  # one window covers the grid: exactly dense
            return local[0]
        pk, pv = self.proxies(k, v, layout, call)
        far = dense_attention(q, pk, pv, bias=layout.bias.to(q.device), scale=call.scale, backend=call.backend)
        out, _ = merge_attention([local, far])
        return out

    def oracle(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        grid = tuple(call.grid)
        index = None
        if self.config.proxy == "sample":
            layout = self.layout(grid, call.layer_index)
            index = sampled_tokens(layout, call_generator(self.config.seed, call.layer, call.timestep))
        shifted = self.config.shift and call.layer_index % 2 == 1
        extra = (call.extra_k, call.extra_v, call.extra_mask) if call.extra_k is not None else None
        return proxy_attention(q, k, v, grid, self.config.resolve(grid), shifted, index, extra, call.scale)

    @classmethod
    def dense_limit(cls, grid: tuple[int, ...]) -> ProxyConfig:
        return ProxyConfig(window=1)  # one-token windows: each proxy is its token, with bias log(1) = 0
