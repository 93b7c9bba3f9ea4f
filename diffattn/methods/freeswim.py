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

Image conditioning (Wan image-to-video: cross-attention with ``add_k_proj``): the processor makes two
attention calls, the image-context term (the first ``S - 512`` encoder tokens, through ``add_k_proj`` /
``add_v_proj``) and the text term (the last 512), adds them and projects out. FreeSwim takes and caches
only the *text* term from F; W adds its own image-context term on every step. So does this method: it
routes the processor's two attention calls (`ModuleCall.route_attention`), caches F's text term and
hands it to W's text call, while W's image term, the sum and ``to_out`` run as the model does (issue
23: caching the whole output was 4e-3 off on F steps and 0.23 on reuse steps). A cross-attention with
any other pattern of attention calls (anything but an image then a text term splitting the encoder
tokens) is not cached: W keeps its own cross-attention, with a warning.

``full_uncond=True`` is FreeSwim's ``nocache`` mode: F runs on the unconditional pass too, and W's
cross-attention (its text term) comes from F on both passes; with no cache, so it needs
``cache_steps=1``.

Self-attention logits are scaled by ``sqrt(log_{N_train}(N))`` on both branches. A difference by
design: FreeSwim hard-codes ``N = 2 N_train`` (``log(30 * 52 * 2, 30 * 52)``, Wan 1.3B at twice its
training area); ``entropy_scale=True`` derives it from the actual grids, per frame and per UNet level,
so any resolution gets its own scale. FreeSwim also ends its dual path at a fixed step (``i < 40`` in its
cache pipeline, ``cover_step`` in the nocache one); here that is the ``full_steps`` knob (no preset sets it).
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
from .lifecycle import Branch, DenoiserCall, InnerAttention, ModuleCall
from .naive import freeswim_mask, masked_attention
from .registry import register_method

if TYPE_CHECKING:
    from ..models import FamilyAdapter

logger = logging.getLogger("diffattn")

_COND = ("cond", "cfg")
#: the CFG passes a W call can be (F runs before them)
_PASSES = ("cond", "uncond", "cfg")


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
    full_uncond: F runs on the unconditional pass too and W takes its cross-attention from F on both
        passes (FreeSwim's ``nocache`` mode); needs ``cache_steps=1``.
    """

    train_grid: int | tuple[int, int]
    cache_steps: int = 2
    entropy_scale: bool = True
    full_steps: tuple[int, int] | None = None
    full_uncond: bool = False

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
        if not isinstance(self.full_uncond, bool):
            raise TypeError(f"full_uncond={self.full_uncond!r} must be True or False")
        if self.full_uncond and self.cache_steps != 1:
            raise ValueError(
                f"full_uncond=True (FreeSwim's nocache mode: F on every pass of every step) needs cache_steps=1, "
                f"got cache_steps={self.cache_steps}"
            )

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


@dataclasses.dataclass(frozen=True)
class _Cached:
    """F's cross-attention of one layer: its whole output (``kind="output"``, ``[B, S, C]``), or its text term
    (``"text"``, ``[B, S, H, D]``: the output of attention call ``index`` over ``keys`` text keys)."""

    kind: str
    value: Tensor
    index: int = -1
    keys: int = -1


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
        ({"train_grid": 3, "full_uncond": 1}, TypeError, r"full_uncond=1 must be True or False"),
        ({"train_grid": 3, "full_uncond": True}, ValueError, r"full_uncond=True .* needs cache_steps=1"),
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

    # ---- F first (conditional rows only, or every row with full_uncond), then W ------------------------
    def new_forward(self, call: DenoiserCall, *args: Any, **kwargs: Any) -> Any:
        branch = call.branch
        if (branch.name == "unknown" or call.step is None) and not call.state.get("warned"):
            call.state["warned"] = True  # once per generation: F never runs without a known cond pass and step
            logger.warning(
                "diffattn: freeswim cannot tell the conditional pass or the step of this denoiser call (a bare "
                "denoiser, or prompt embeddings the pipeline changed); it runs the window branch W only"
            )
        if self.config.runs_full(call.step):
            if self.config.full_uncond and branch.name in _PASSES:
                call.run_as("full", *args, **kwargs)  # every row: W takes F's cross-attention on both passes
            elif branch.name == "cond" and branch.cond_rows:
                call.run_as("full", *args, **kwargs)
            elif branch.name == "cfg" and branch.cond_rows:  # batched CFG: F on the conditional rows only
                batch = _batch(args, kwargs)
                rows = list(branch.cond_rows)
                f_args = tuple(_rows(a, batch, rows) for a in args)
                f_kwargs = {k: _rows(v, batch, rows) for k, v in kwargs.items()}
                call.run_as(Branch("full", tuple(range(len(rows)))), *f_args, **f_kwargs)
        return call.run(*args, **kwargs)

    # ---- cross-attention: F fills the per-layer cache, W passes read it ----------------------------------
    def _reuse_rows(self, call: ModuleCall, batch: int) -> list[int]:
        """Rows of this W cross-attention call that take F's output (FreeSwim: the conditional ones)."""
        branch = call.branch
        if not self.config.in_full(call.step) or branch.name not in _PASSES:
            return []
        if self.config.full_uncond:
            return list(range(batch))
        return list(branch.cond_rows or ()) if branch.name in _COND else []

    def process(self, run: Any, call: ModuleCall) -> Any:
        if call.kind != "cross":
            return run()
        state = call.state
        image_context = getattr(call.arguments.get("attn"), "add_k_proj", None) is not None
        if call.branch.name == "full":
            if image_context:
                return self._fill_text_term(run, call)
            out = state["cross"] = _Cached("output", run())
            return out.value
        cached: _Cached | None = state.get("cross")
        hidden = call.arguments["hidden_states"]  # [B, S, C]
        batch = hidden.shape[0]
        rows = self._reuse_rows(call, batch) if cached is not None else []
        if not rows:
            return run()
        assert cached is not None
        others = [r for r in range(batch) if r not in set(rows)]
        call.mark_served_from_cache()
        if cached.kind == "text":
            return self._reuse_text_term(run, call, cached, rows, others)
        if not others:
            return cached.value
        # batched CFG: the unconditional rows attend themselves, the conditional rows take F's output
        out_others = run(**{k: _rows(v, batch, others) for k, v in call.arguments.items() if k != "attn"})
        out = out_others.new_empty((batch, *out_others.shape[1:]))
        out[others] = out_others
        out[rows] = cached.value.to(out.dtype)
        return out

    def _fill_text_term(self, run: Any, call: ModuleCall) -> Any:
        """F's cross-attention with image context: run it as is, keep its text term (see the module docstring)."""
        calls: list[tuple[int, Tensor]] = []

        def record(inner: InnerAttention) -> Tensor:
            out = inner.compute()
            calls.append((inner.k.shape[1], out))
            return out

        call.route_attention(record)
        out = run()
        encoder = call.arguments.get("encoder_hidden_states")
        tokens = encoder.shape[1] if isinstance(encoder, Tensor) else None
        keys = [n for n, _ in calls]
        if len(calls) == 2 and sum(keys) == tokens:  # [image context, text], splitting the encoder tokens
            call.state["cross"] = _Cached("text", calls[1][1], index=1, keys=keys[1])
        else:
            call.state.pop("cross", None)
            logger.warning(
                "diffattn: freeswim: %s has image context but made attention calls over %s keys (expected an "
                "image-context and a text term over the %s encoder tokens); W keeps its own cross-attention",
                call.layer, keys, tokens,
            )  # fmt: skip
        return out

    @staticmethod
    def _reuse_text_term(run: Any, call: ModuleCall, cached: _Cached, rows: list[int], others: list[int]) -> Any:
        """W's cross-attention with image context: its own image term, F's text term on ``rows``."""

        def reuse(inner: InnerAttention) -> Tensor:
            if inner.index != cached.index or inner.k.shape[1] != cached.keys:
                return inner.compute()
            text = cached.value.to(inner.q.dtype)
            if not others:
                return text
            out = inner.q.new_empty((inner.q.shape[0], inner.q.shape[1], inner.q.shape[2], inner.v.shape[3]))
            out[others] = inner.compute(others)
            out[rows] = text
            return out

        call.route_attention(reuse)
        return run()

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
