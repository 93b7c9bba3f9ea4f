"""``freeswim``: FreeSwim's dual path (read from its public code; facts, not code).

Per denoising step two branches run on the same input latent:
  - **W (window)**: self-attention is an inward sliding window the size of the model's training token
    grid: half-width ``train // 2`` per side, so window ``2 * (train // 2) + 1`` (Wan's 30x52 tokens
    give 31x53), i.e. GNA with stride 1 (NATTEN's border rule *is* FreeSwim's inward shift), spatial
    per frame with all frames. Its result is the one that reaches the scheduler.
  - **F (full)**: full self-attention, on the conditional pass only, every ``cache_steps`` steps. At
    layer l, F's cross-attention output (from F's own hidden states) replaces W's and is cached per
    layer; on the conditional passes in between, W reuses the cache and skips its cross-attention.
    The unconditional pass runs W only, with its own cross-attention.
F's layer l depends on F only, so running F's forward first (conditional rows only) and W's second is
exactly FreeSwim's result. Two forwards rather than one batch of two: F exists on cached steps only
and on conditional rows only, so a joint batch would need per-row attention kinds in every layer,
and a separate F pass costs the same FLOPs with no padding or per-row dispatch.

Self-attention logits are scaled by ``sqrt(log_{N_train}(N))`` (FreeSwim hard-codes N = 2 N_train;
``entropy_scale=True`` derives it from the actual grids, per frame and per UNet level), on both branches.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .base import AttendCall, AttentionMethod, FlopBound, pairs_bound
from .gna import gna_plan
from .lifecycle import Branch, DenoiserCall, ModuleCall
from .naive import freeswim_mask, masked_attention
from .registry import register_method

if TYPE_CHECKING:
    from ..models import FamilyAdapter

logger = logging.getLogger("diffattn")

_COND = ("cond", "cfg")


@dataclasses.dataclass(frozen=True)
class FreeSwimConfig:
    """FreeSwim knobs.

    train_grid: the model's training token grid (rows, columns) per frame, >= 1; an int is square.
        W's window is ``2 * (train // 2) + 1`` per axis (halved per UNet level alike); frames are
        never windowed.
    cache_steps: F runs every ``cache_steps`` steps (FreeSwim's default 2), >= 1.
    entropy_scale: scale self-attention logits by ``sqrt(log_{N_train}(N))`` (FreeSwim's default).
    full_steps: ``(start, end)`` step indices where F runs and W reuses its cross-attention; W runs
        alone, with its own cross-attention, elsewhere. None = every step.
    """

    train_grid: int | tuple[int, int]
    cache_steps: int = 2
    entropy_scale: bool = True
    full_steps: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        grid = self.train_grid if isinstance(self.train_grid, tuple | list) else (self.train_grid,) * 2
        if len(grid) != 2 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
            raise ValueError(
                f"train_grid={self.train_grid!r} must be an int or (rows, columns) of ints >= 1: the training "
                "token grid per frame"
            )
        object.__setattr__(self, "train_grid", tuple(grid))
        if isinstance(self.cache_steps, bool) or not isinstance(self.cache_steps, int) or self.cache_steps < 1:
            raise ValueError(f"cache_steps={self.cache_steps!r} must be an int >= 1 (F runs every cache_steps steps)")
        if not isinstance(self.entropy_scale, bool):
            raise TypeError(f"entropy_scale={self.entropy_scale!r} must be True or False")
        if self.full_steps is not None:
            fs = tuple(self.full_steps) if isinstance(self.full_steps, tuple | list | range) else None
            if isinstance(self.full_steps, range):
                fs = (self.full_steps.start, self.full_steps.stop)
            if (
                fs is None
                or len(fs) != 2
                or any(isinstance(s, bool) or not isinstance(s, int) for s in fs)
                or not 0 <= fs[0] < fs[1]
            ):
                raise ValueError(f"full_steps={self.full_steps!r} must be (start, end) step indices, 0 <= start < end")
            object.__setattr__(self, "full_steps", fs)

    def in_full(self, step: int | None) -> bool:
        """Whether ``step`` lies where F runs (unknown steps count as outside)."""
        if step is None:
            return False
        return self.full_steps is None or self.full_steps[0] <= step < self.full_steps[1]

    def runs_full(self, step: int | None) -> bool:
        """Whether F runs at ``step`` (every ``cache_steps`` from the start of ``full_steps``)."""
        start = 0 if self.full_steps is None else self.full_steps[0]
        return self.in_full(step) and (step - start) % self.cache_steps == 0  # type: ignore[operator]


def level_train_grid(config: FreeSwimConfig, call: AttendCall) -> tuple[int, ...]:
    """The training grid at this call's level, for the grid's spatial axes (its last two, or its one
    axis on a 1-D grid): UNet levels ceil-halve it as they halve the grid."""
    train = config.train_grid[-min(2, len(call.grid)) :]
    layout = call.layout
    if layout is None or not layout.multiscale:
        return train
    grid = layout.grid
    while tuple(grid) != tuple(call.grid) and any(g > 1 for g in grid):
        grid = tuple((g + 1) // 2 for g in grid)
        train = tuple((t + 1) // 2 for t in train)
    return train


def w_window(grid: tuple[int, ...], train: tuple[int, ...]) -> tuple[int, ...]:
    """W's GNA window on ``grid``: `window_size` on the spatial axes (clamped), every frame attended."""
    k = len(train)
    return (*grid[:-k], *(min(window_size(t), g) for t, g in zip(train, grid[-k:])))


def window_size(train: int) -> int:
    """W's window along an axis of ``train`` training tokens: FreeSwim's half-width ``train // 2`` on
    each side of the query, i.e. ``2 * (train // 2) + 1`` (odd; Wan's 30x52 tokens give 31x53)."""
    return 2 * (train // 2) + 1


def entropy_scale(grid: tuple[int, ...], train: tuple[int, ...], head_dim: int) -> float | None:
    """``sqrt(log_{N_train}(N) / d)`` with N, N_train the tokens per frame of ``grid`` and ``train`` (its
    spatial axes); None (the model's own scale) when the grid is no larger than the training grid."""
    n, n_train = math.prod(grid[-len(train) :]), math.prod(train)
    if n <= n_train or n_train <= 1:
        return None
    return math.sqrt(math.log(n, n_train) / head_dim)


def _rows(value: Any, batch: int, rows: list[int]) -> Any:
    """``value`` restricted to batch ``rows``: tensors with a batch axis, and dicts of them, recursively."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value[rows]
    if isinstance(value, dict):
        return {k: _rows(v, batch, rows) for k, v in value.items()}
    return value


def _batch(args: tuple, kwargs: dict[str, Any]) -> int | None:
    first = next((v for v in (*args, *kwargs.values()) if isinstance(v, Tensor) and v.dim() > 0), None)
    return None if first is None else first.shape[0]


@register_method
class FreeSwim(AttentionMethod):
    """FreeSwim's window branch W plus the cached full branch F (see the module docstring)."""

    name = "freeswim"
    Config = FreeSwimConfig
    targets = frozenset({"self", "cross"})
    example_knobs = {"train_grid": 3}
    invalid_knobs = (
        ({"train_grid": 0}, ValueError, r"train_grid=0 must be an int or \(rows, columns\) of ints >= 1"),
        ({"train_grid": (2, 3, 4)}, ValueError, r"train_grid=\(2, 3, 4\) must be an int or \(rows, columns\)"),
        ({"train_grid": 3, "cache_steps": 0}, ValueError, r"cache_steps=0 must be an int >= 1"),
        ({"train_grid": 3, "entropy_scale": 1}, TypeError, r"entropy_scale=1 must be True or False"),
        ({"train_grid": 3, "full_steps": (4, 2)}, ValueError, r"full_steps=\(4, 2\) must be \(start, end\)"),
    )

    def flop_bound(self, grid: tuple[int, ...], extra_tokens: int = 0) -> FlopBound:
        """Per step with CFG: dense attends twice; freeswim runs W twice (window pairs) and F (dense)
        every ``cache_steps`` steps. Cross-attention is not counted (its cache saves more)."""
        n = math.prod(grid)
        k = min(2, len(grid))
        window = math.prod(w_window(tuple(grid), self.config.train_grid[-k:]))
        c = self.config.cache_steps
        pairs = (2 * n * (window + extra_tokens) + n * (n + extra_tokens) / c) / 2
        return pairs_bound(grid, extra_tokens, pairs, f"2 x N / (2 x window {window} + N / cache_steps {c}) (CFG)")

    def oracle(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        grid = tuple(call.grid)
        train = level_train_grid(self.config, call)
        scale = entropy_scale(grid, train, q.shape[-1]) if self.config.entropy_scale else None
        mask = None if call.branch.name == "full" else freeswim_mask(grid, train)
        extra = (call.extra_k, call.extra_v, call.extra_mask)
        return masked_attention(q, k, v, mask, extra, call.scale if scale is None else scale)

    @classmethod
    def dense_limit(cls, grid: tuple[int, ...]) -> FreeSwimConfig:
        return FreeSwimConfig(train_grid=max(grid), cache_steps=1, entropy_scale=False)

    def supports(self, adapter: FamilyAdapter) -> str | None:
        if adapter.text_position != "none":  # text joins the grid in one attention (SD3, FLUX, CogVideoX, ...)
            return (
                "FreeSwim caches separate cross-attention outputs, and this family joins text and image in one "
                "attention; use it on UNets (SD 1.5/2.1, SDXL), PixArt or Wan"
            )
        return None

    # ---- F first (conditional rows only), then W ------------------------------------------------
    def new_forward(self, call: DenoiserCall, *args: Any, **kwargs: Any) -> Any:
        branch = call.branch
        if (branch.name == "unknown" or call.step is None) and not call.state.get("warned"):
            call.state["warned"] = True  # once per generation: F never runs without a known cond pass and step
            logger.warning(
                "diffattn: freeswim cannot tell the conditional pass or the step of this denoiser call (a bare "
                "denoiser, or prompt embeddings the pipeline changed); it runs the window branch W only"
            )
        if branch.name in _COND and branch.cond_rows and self.config.runs_full(call.step):
            if branch.name == "cond":
                call.run_as("full", *args, **kwargs)
            else:  # batched CFG: F on the conditional rows only
                batch = _batch(args, kwargs)
                rows = list(branch.cond_rows)
                f_args = tuple(_rows(a, batch, rows) for a in args)
                f_kwargs = {k: _rows(v, batch, rows) for k, v in kwargs.items()}
                call.run_as(Branch("full", tuple(range(len(rows)))), *f_args, **f_kwargs)
        return call.run(*args, **kwargs)

    # ---- cross-attention: F fills the per-layer cache, conditional W passes read it ----------------
    def process(self, run: Any, call: ModuleCall) -> Any:
        if call.kind != "cross":
            return run()
        branch, state = call.branch, call.state
        if branch.name == "full":
            out = state["cross"] = run()
            return out
        cached = state.get("cross")
        if cached is None or branch.name not in _COND or not branch.cond_rows or not self.config.in_full(call.step):
            return run()
        if branch.name == "cond":
            return cached
        # batched CFG: the unconditional rows attend themselves, the conditional rows take F's output
        hidden = call.arguments["hidden_states"]  # [B, S, C]
        batch = hidden.shape[0]
        cond = list(branch.cond_rows)
        uncond = [r for r in range(batch) if r not in set(cond)]
        out_uncond = run(**{k: _rows(v, batch, uncond) for k, v in call.arguments.items() if k != "attn"})
        out = out_uncond.new_empty((batch, *out_uncond.shape[1:]))
        out[uncond] = out_uncond
        out[cond] = cached.to(out.dtype)
        call.mark_served_from_cache()
        return out

    # ---- self-attention: W = inward window of the training grid, F = full ---------------------------
    def attend(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        grid = tuple(call.grid)
        train = level_train_grid(self.config, call)
        scale = entropy_scale(grid, train, q.shape[-1]) if self.config.entropy_scale else None
        window = grid if call.branch.name == "full" else w_window(grid, train)
        ones = (1,) * len(grid)
        plan = gna_plan(grid, window, ones, ones)
        if scale is not None:
            call = dataclasses.replace(call, scale=scale)
        out = self.plan_attention(q, k, v, plan, call)
        assert isinstance(out, torch.Tensor)
        return out
