"""Every speedup bound a report prints, from one place.

- FLOP bound: ``method.flop_bound(grid, extra_tokens)`` (each method class states its own count);
- token and tile bounds of GNA-like patterns (GNA; MSW's windows are blocked GNA): `diffattn.sim`;
- the tile bound of the `BlockPlan` the CPU backend actually runs: `diffattn.sim.plan_bound`;
- the end-to-end (Amdahl) bound from a measured attention share: `diffattn.sim.amdahl`;
- the attention-part and end-to-end bounds of a patched model from its modules' FLOP bounds weighted by
  their dense attention times (`end_to_end_bounds`, used by `compare` and the end-to-end benchmark; a
  calibrated plan's bound per module, `module_flop_bound`); the same for any parts of the attention time
  (`parts_bounds`: a calibration plan's (module, bucket) entries);
- FreeSwim's whole-step matmul FLOP and tile bounds on a Wan-style transformer (`freeswim_step_bounds`,
  over `transformer_forward_flops`);
- the time-per-image bound of a two-stage recipe against dense at the target (`two_stage_bound`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..kernels import get_backend
from ..methods import AttentionMethod
from ..methods.freeswim import window_size
from ..methods.gna import GNAConfig, gna_plan, gna_q_tile
from ..sim import amdahl, plan_bound, simulate


@dataclasses.dataclass(frozen=True)
class GNABounds:
    """Bounds of resolved GNA parameters on a grid.

    token_bound: ``N^2 / attended pairs``; tile_bound: all / live tile pairs on `diffattn.sim`'s
    default (H100 FNA) tiles; plan_bound: ``1 / density`` of the CPU `BlockPlan` that runs;
    plan_has_mask: that plan has element-masked tiles.
    """

    token_bound: float
    tile_bound: float
    plan_bound: float
    plan_has_mask: bool


def gna_bounds(
    grid: tuple[int, ...],
    window: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...] | int = 1,
    item_bytes: int = 0,
) -> GNABounds:
    """`GNABounds` of GNA ``window/stride/dilation`` (ints or per-axis tuples) on ``grid``, the plan's for calls
    whose q holds ``item_bytes`` per batch item (`batch_item_bytes`; the tile depends on it)."""
    sim = simulate(tuple(grid), window, stride, dilation)
    resolved = (sim.grid, sim.window, sim.stride, sim.dilation)
    plan = gna_plan(*resolved, gna_q_tile(*resolved, get_backend("cpu"), item_bytes))  # what gna(backend="cpu") runs
    return GNABounds(sim.token_bound, sim.tile_bound, plan_bound(plan), plan.has_mask)


def gna_pattern(method: AttentionMethod, grid: tuple[int, ...]) -> tuple[tuple[int, ...], ...] | None:
    """(window, stride, dilation) when ``method``'s pattern on ``grid`` is a GNA pattern (GNA itself;
    MSW's unshifted windows are blocked GNA), else None."""
    grid = tuple(grid)
    if method.name == "gna":
        return method.config.resolve(grid)
    if method.name == "msw":
        window = method.config.resolve_window(grid)
        return GNAConfig(window=window, stride=window).resolve(grid)
    return None


@dataclasses.dataclass(frozen=True)
class MethodBounds:
    """All bounds of one method config on one grid; None where a bound does not apply.

    flop_bound / flop_formula: the method's own FLOP count (`AttentionMethod.flop_bound`).
    token_bound, tile_bound, plan_bound: GNA-like patterns only (see `GNABounds`).
    attention_share: measured share of step time in attention, if given.
    end_to_end_bound: Amdahl bound of the step with the FLOP bound on that share.
    """

    flop_bound: float
    flop_formula: str
    token_bound: float | None = None
    tile_bound: float | None = None
    plan_bound: float | None = None
    attention_share: float | None = None
    end_to_end_bound: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def method_bounds(
    method: AttentionMethod, grid: tuple[int, ...], extra_tokens: int = 0, attention_share: float | None = None
) -> MethodBounds:
    """Every bound of ``method`` on a token ``grid`` with ``extra_tokens`` text keys per query, and
    the Amdahl end-to-end bound when the measured ``attention_share`` (in [0, 1]) is given."""
    grid = tuple(grid)
    flop = method.flop_bound(grid, extra_tokens)
    gna = {}
    pattern = gna_pattern(method, grid)
    if pattern is not None:
        gb = gna_bounds(grid, *pattern)
        gna = dict(token_bound=gb.token_bound, tile_bound=gb.tile_bound, plan_bound=gb.plan_bound)
    e2e = None if attention_share is None else amdahl(attention_share, flop.value)
    return MethodBounds(flop.value, flop.formula, attention_share=attention_share, end_to_end_bound=e2e, **gna)


def module_flop_bound(method: AttentionMethod, module: str, grid: tuple[int, ...], extra_tokens: int = 0) -> float:
    """FLOP bound of ``method`` on one module (`AttentionMethod.module_flop_bound`: a calibrated plan's bound for
    that module, else the method's own)."""
    return method.module_flop_bound(module, grid, extra_tokens).value


def parts_bounds(parts: Sequence[tuple[float, float]], share: float) -> tuple[float, float]:
    """``(attention bound, end-to-end bound)`` when attention, a fraction ``share`` of the step, is made of
    ``parts`` ``(dense seconds, speedup bound)`` (modules, or a module's stretches of steps): the attention bound
    is the dense seconds over the predicted ones, the end-to-end bound Amdahl's. No parts: 1.0, 1.0."""
    dense = sum(s for s, _ in parts)
    if dense <= 0:
        return 1.0, 1.0
    attention = dense / sum(s / b for s, b in parts)
    return attention, amdahl(min(max(share, 0.0), 1.0), attention)


def speedup_bound(method: AttentionMethod, grid: tuple[int, ...], extra_tokens: int = 0, kind: str = "flop") -> float:
    """One bound of ``method`` on ``grid`` with ``extra_tokens`` text keys per query: ``"flop"`` its FLOP bound;
    ``"tile"`` for GNA-like patterns the tile bound (`diffattn.sim`'s default tiles) on the image keys with the text
    keys counted in full, else the FLOP bound."""
    if kind not in ("flop", "tile"):
        raise ValueError(f"bound kind {kind!r} must be 'flop' or 'tile'")
    pattern = gna_pattern(method, grid) if kind == "tile" else None
    if pattern is None:
        return method.flop_bound(tuple(grid), extra_tokens).value
    n = math.prod(grid)
    tile = gna_bounds(tuple(grid), *pattern).tile_bound
    return n * (n + extra_tokens) / (n * n / tile + n * extra_tokens)


def end_to_end_bounds(
    method: AttentionMethod,
    stats: Mapping[str, Any],
    grids: Mapping[str, tuple[tuple[int, ...], int]],
    dense_attention_s: Mapping[str, float],
    dense_step_s: float,
    modules: Sequence[str],
) -> dict[str, Any]:
    """Attention-part and end-to-end (Amdahl) bounds of ``method`` installed on ``modules``.

    stats: per-module call counts (``.sparse``, ``.fallback``, ``.dense``, as `AttentionHandle.stats`);
    grids: per module, the (grid, text tokens) it attended (`runner.GridRecorder`); modules without
    one count as dense. Each module's FLOP bound, on the fraction of its calls that ran sparse, is
    weighted by its dense attention seconds ``dense_attention_s``; ``dense_step_s`` (the dense run's
    step time, summed over the same steps) gives the dense attention share for Amdahl. Token and tile
    bounds (`method_bounds`) are added at the finest grid.
    """
    parts = []
    for m in modules:
        s = stats[m]
        calls = s.sparse + s.fallback + s.dense
        frac = s.sparse / calls if calls else 0.0
        bound = module_flop_bound(method, m, *grids[m]) if m in grids else 1.0
        parts.append((dense_attention_s[m], 1 / ((1 - frac) + frac / bound)))  # its dense calls at 1x
    share = min(max(sum(s for s, _ in parts) / dense_step_s, 0.0), 1.0)
    attention_bound, end_to_end = parts_bounds(parts, share)
    finest = max(grids.values(), key=lambda g: math.prod(g[0])) if grids else None
    out: dict[str, Any] = {
        "dense_attention_share": share,
        "attention_bound": attention_bound,
        "end_to_end_bound": end_to_end,
        "finest_grid": list(finest[0]) if finest else None,
        "text_tokens": finest[1] if finest else 0,
    }
    if finest is not None:
        b = method_bounds(method, finest[0], finest[1])
        out.update(flop_bound=b.flop_bound, flop_formula=b.flop_formula, token_bound=b.token_bound,
                   tile_bound=b.tile_bound, plan_bound=b.plan_bound)
    return out


def transformer_forward_flops(
    n: int, pairs: int, text: int, layers: int, heads: int, head_dim: int, ffn: int, cross: bool = True
) -> float:
    """Matmul FLOPs of one forward of a Wan-style transformer (self-attention, cross-attention to
    ``text`` tokens, FFN of width ``ffn``; ``heads x head_dim`` wide, ``layers`` deep) over ``n`` image
    tokens with ``pairs`` attended (query, key) pairs; ``cross=False`` leaves out cross-attention."""
    d = heads * head_dim
    per_layer = 4 * pairs * d  # QK^T and PV
    per_layer += 2 * n * d * d * 4  # q, k, v, o of self-attention
    per_layer += 2 * 2 * n * d * ffn  # FFN in and out
    if cross:
        per_layer += 2 * n * d * d * 2 + 2 * text * d * d * 2 + 4 * n * text * d  # q, o; k, v; attention
    return layers * per_layer


def freeswim_step_bounds(
    grid: tuple[int, int],
    text: int,
    layers: int,
    cache_steps: int,
    train_grid: tuple[int, int],
    heads: int,
    head_dim: int,
    ffn: int,
    frames: int = 1,
) -> dict[str, Any]:
    """FreeSwim's bounds over a whole denoising step with CFG on a Wan-style transformer
    (`transformer_forward_flops`), at ``frames`` frames of ``grid`` tokens trained at ``train_grid``.

    Dense: a cond and an uncond forward. FreeSwim: W on the uncond pass, W without cross-attention
    (cached) on the cond pass, plus F (dense) every ``cache_steps`` steps. ``flop_bound``: dense FLOPs
    / FreeSwim FLOPs; ``tile_bound``: the same with W's attention counted as the tiles of the CPU plan
    that runs (`diffattn.sim.plan_bound`); ``attention_share_dense``: attention's share of a dense
    step's FLOPs; ``window`` and ``window_density``: W's window (clamped to the grid) and its share."""
    width = dict(heads=heads, head_dim=head_dim, ffn=ffn)
    n = frames * math.prod(grid)
    window = tuple(min(window_size(t), g) for t, g in zip(train_grid, grid))
    dense_pass = transformer_forward_flops(n, n * n, text, layers, **width)
    # the inward window: every query attends exactly prod(window) keys in every frame
    w_pairs = n * frames * math.prod(window)
    dense_step = 2 * dense_pass  # cond + uncond
    freeswim_step = (
        transformer_forward_flops(n, w_pairs, text, layers, **width)  # W uncond
        + transformer_forward_flops(n, w_pairs, text, layers, cross=False, **width)  # W cond: cached cross-attention
        + dense_pass / cache_steps  # F every cache_steps steps
    )
    plan = gna_plan((frames, *grid), (frames, *window), (1, 1, 1), (1, 1, 1))  # the plan the CPU kernel runs
    attn_dense = 4 * n * n * heads * head_dim * layers
    tile_pairs = n * n / plan_bound(plan)
    freeswim_tile = freeswim_step + 2 * (tile_pairs - w_pairs) * 4 * heads * head_dim * layers
    return {
        "flop_bound": dense_step / freeswim_step,
        "tile_bound": dense_step / freeswim_tile,
        "attention_share_dense": 2 * attn_dense / dense_step,
        "window": window,
        "window_density": frames * math.prod(window) / n,
    }


def two_stage_bound(steps: int, refine_steps: int, step_bound: float) -> float:
    """Bound of a two-stage recipe's speedup per image over dense generation at the target size: dense runs
    ``steps`` steps at the target, the recipe ``refine_steps`` there, each at best ``step_bound`` times
    faster (the engine's Amdahl bound), and its stage 1 at the base size costs at least nothing:
    ``steps / refine_steps * step_bound`` (text encoding and decoding, alike in both, are left out)."""
    if refine_steps < 1 or steps < refine_steps:
        raise ValueError(f"refine_steps={refine_steps} must be in [1, steps={steps}]")
    if not step_bound > 0:
        raise ValueError(f"step_bound={step_bound} must be > 0")
    return steps / refine_steps * step_bound
