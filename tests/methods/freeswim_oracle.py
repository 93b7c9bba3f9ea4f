"""FreeSwim's dual path written out naively, with no diffattn machinery: the independent oracle of
the ``freeswim`` method.

Literal recipe (FreeSwim's public Wan code, generalised to the denoisers with separate cross-attention):
  - W (window) branch: every self-attention uses FreeSwim's *inward* sliding-window mask, built
    here from its own formula (half-widths ``d = train // 2``, shifted inward at the borders), on
    every frame with all frames; logits scaled by ``sqrt(log_{N_train}(N) / d_head)`` if asked.
  - F (full) branch: on conditional passes of every ``cache_steps``-th step the denoiser runs first
    on the conditional rows only, with full self-attention (same scale); each cross-attention output
    of F is stored per layer.
  - On every conditional pass, W's cross-attention output is the stored F output of that layer (W
    computes no cross-attention of its own there); the unconditional rows/calls use their own.
  - Image conditioning (Wan I2V, ``add_k_proj``), literally as FreeSwim's processor: the encoder tokens are
    split at ``S - 512`` into image context and text; the image term always uses the running branch's own
    query; only the text term is stored from F and read by W.
  - ``full_uncond`` (FreeSwim's ``nocache`` mode): F runs on every pass (the whole batch) of every step and
    every W row reads F's text term / cross-attention.
This runs two separate forwards per F step, exactly as the recipe reads: a monkeypatched
``F.scaled_dot_product_attention`` does the attention, forward hooks say which module is running.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

_SDPA = F.scaled_dot_product_attention


def inward_window_mask(grid: tuple[int, ...], train: tuple[int, int]) -> torch.Tensor:
    """``[N, N]`` bool: FreeSwim's inward sliding-window mask on ``grid`` ((H, W) or (F, H, W);
    frames are never restricted), half-widths ``train // 2`` per spatial axis."""
    frames = grid[0] if len(grid) == 3 else 1
    height, width = grid[-2:]
    d_h, d_w = train[0] // 2, train[1] // 2
    idx = torch.arange(frames * height * width)
    hw = idx % (height * width)
    h, w = hw // width, hw % width
    q_h, q_w, kv_h, kv_w = h[:, None], w[:, None], h[None, :], w[None, :]
    # "the distance that needs to go inward" at each border, from FreeSwim's mask
    d_b = (d_h - q_h).clamp_min(0)
    d_u = (d_h + q_h - height + 1).clamp_min(0)
    d_r = (d_w - q_w).clamp_min(0)
    d_l = (d_w + q_w - width + 1).clamp_min(0)
    return (
        (kv_h <= q_h + d_h + d_b) & (kv_h >= q_h - d_h - d_u) & (kv_w <= q_w + d_w + d_r) & (kv_w >= q_w - d_w - d_l)
    )


def _halve(grid: tuple[int, ...]) -> tuple[int, ...]:
    return tuple((g + 1) // 2 for g in grid)


class NaiveFreeSwim:
    """Install with ``with oracle.installed(pipe): pipe(...)``.

    top_grid_fn(call_kwargs) -> the finest token grid of a denoiser call ((H, W) or (F, H, W)).
    multiscale: UNet levels (grid ceil-halved per level; the train grid is halved alike).
    positive: for unbatched CFG, the positive prompt embeddings (the conditional call is the one
        receiving them); None = batched CFG, the conditional rows are the second half of the batch.
    """

    def __init__(
        self,
        train_grid: tuple[int, int],
        cache_steps: int,
        entropy_scale: bool,
        top_grid_fn: Any,
        multiscale: bool = False,
        positive: torch.Tensor | None = None,
        full_uncond: bool = False,
    ) -> None:
        self.train_grid = train_grid
        self.cache_steps = cache_steps
        self.entropy_scale = entropy_scale
        self.top_grid_fn = top_grid_fn
        self.multiscale = multiscale
        self.positive = positive
        self.full_uncond = full_uncond
        self.image_context: int | None = None  # image-context tokens of the running I2V cross-attention
        self.cache: dict[str, torch.Tensor] = {}
        self.mode = "W"  # which branch runs now
        self.cond_rows: slice | None = None  # rows of the current W call that are conditional
        self.module: tuple[str, str] | None = None  # (kind, name) of the running attention module
        self.top_grid: tuple[int, ...] = ()
        self.f_runs = 0
        self.cache_reads = 0

    # ---- attention ------------------------------------------------------------------------------
    def _level(self, seq: int) -> tuple[tuple[int, ...], tuple[int, int]]:
        grid, train = self.top_grid, self.train_grid
        while math.prod(grid) != seq:
            assert self.multiscale and any(g > 1 for g in grid), (grid, seq)
            grid, train = _halve(grid), _halve(train)
        return grid, train

    def sdpa(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        q, k, v = query, key, value  # [B, H, S, D]
        if self.module is None:
            return _SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)
        kind, name = self.module
        if kind == "self":
            grid, train = self._level(q.shape[-2])
            scale = q.shape[-1] ** -0.5
            n, n_train = math.prod(grid[-2:]), math.prod(train)
            if self.entropy_scale and n > n_train > 1:
                scale = math.sqrt(math.log(n, n_train) / q.shape[-1])
            mask = None if self.mode == "F" else inward_window_mask(grid, train)
            return _SDPA(q, k, v, attn_mask=mask, scale=scale)
        # cross-attention; FreeSwim's I2V split: the first S - 512 encoder tokens are image context, whose term
        # every branch computes with its own query
        if self.image_context is not None and k.shape[-2] == self.image_context:
            return _SDPA(q, k, v, attn_mask=attn_mask, scale=scale)
        if self.mode == "F":
            out = _SDPA(q, k, v, attn_mask=attn_mask, scale=scale)
            self.cache[name] = out
            return out
        if self.cond_rows is None:
            return _SDPA(q, k, v, attn_mask=attn_mask, scale=scale)
        rows = torch.arange(q.shape[0])
        cond = (rows >= self.cond_rows.start) & (rows < self.cond_rows.stop)
        out = torch.empty_like(q)
        if bool((~cond).any()):
            mask = attn_mask[~cond] if attn_mask is not None and attn_mask.shape[0] == q.shape[0] else attn_mask
            out[~cond] = _SDPA(q[~cond], k[~cond], v[~cond], attn_mask=mask, scale=scale)
        out[cond] = self.cache[name]
        self.cache_reads += 1
        return out

    # ---- the denoiser: F first (cond rows only), then W --------------------------------------
    def _step(self, pipe: Any, timestep: Any) -> int:
        t = float(torch.as_tensor(timestep).flatten()[0])
        return int(torch.argmin((pipe.scheduler.timesteps.float() - t).abs()))

    def _cond_rows(self, call: dict[str, Any], batch: int) -> slice | None:
        if self.positive is None:
            return slice(batch // 2, batch) if batch % 2 == 0 and batch > 1 else slice(0, batch)
        ehs = call["encoder_hidden_states"]
        return slice(0, batch) if ehs.shape == self.positive.shape and torch.equal(ehs, self.positive) else None

    def forward(self, pipe: Any, original: Any, signature: Any, *args: Any, **kwargs: Any) -> Any:
        call = signature.bind_partial(*args, **kwargs).arguments
        first = next(iter(call))
        batch = call[first].shape[0]
        self.top_grid = self.top_grid_fn(call)
        step = self._step(pipe, call["timestep"])
        cond = self._cond_rows(call, batch)
        if self.full_uncond:  # every pass: F on the whole batch, and all of W reads it
            cond = slice(0, batch)
        if cond is not None and step % self.cache_steps == 0:
            sliced = {key: _rows(value, batch, cond) for key, value in call.items()}
            self.mode, self.cond_rows = "F", None
            try:
                original(**sliced)
            finally:
                self.mode = "W"
            self.f_runs += 1
        self.cond_rows = cond
        try:
            return original(**call)
        finally:
            self.cond_rows = None

    @contextmanager
    def installed(self, pipe: Any):
        import inspect

        denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
        original = denoiser.forward
        signature = inspect.signature(original)
        hooks = []
        for name, module in denoiser.named_modules():
            if name.endswith(("attn1", "attn2")) and hasattr(module, "processor"):
                kind = "self" if name.endswith("attn1") else "cross"

                def pre(mod, args, kwargs, kind=kind, name=name):
                    self.module = (kind, name)
                    ehs = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
                    image = kind == "cross" and getattr(mod, "add_k_proj", None) is not None and ehs is not None
                    self.image_context = ehs.shape[1] - 512 if image else None  # FreeSwim's hard-coded text length

                def post(mod, args, out):
                    self.module = None
                    self.image_context = None

                hooks += [
                    module.register_forward_pre_hook(pre, with_kwargs=True),
                    module.register_forward_hook(post),
                ]
        denoiser.forward = lambda *a, **kw: self.forward(pipe, original, signature, *a, **kw)
        F.scaled_dot_product_attention = self.sdpa
        try:
            yield self
        finally:
            F.scaled_dot_product_attention = _SDPA
            del denoiser.forward
            for h in hooks:
                h.remove()


def _rows(value: Any, batch: int, rows: slice) -> Any:
    """``value`` restricted to ``rows`` of the batch: tensors with a batch axis, dicts recursively."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value[rows]
    if isinstance(value, dict):
        return {k: _rows(v, batch, rows) for k, v in value.items()}
    return value
