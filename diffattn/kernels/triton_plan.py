"""`KernelPlan`: a `BlockPlan` as the Triton kernel reads it (index tensors, boxes, mask mode), on one device.

Pure torch, so it can be built, cached and inspected without Triton installed (tests, reports, the CPU
machine that prepares a GPU run); `triton_bsa` launches the kernel over it.
"""

import math
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from .plan import BlockPlan

# How a partial tile's element mask is obtained (a constexpr of the kernel).
MASK_NONE, MASK_GNA, MASK_LOADED = 0, 1, 2
#: Block-major order needs key blocks of a multiple of this many tokens (the smallest BLOCK_N kept).
BLOCK_TOKENS = 64


def _key_box(plan: BlockPlan) -> tuple[Tensor, Tensor]:
    """``(start, len)``, each ``[T, ndim]``, for plans whose tile keys per axis are ``len`` positions
    ``start + step * r`` followed by padding: GNA (step = dilation: one dilation group, a contiguous
    window range; see ``methods/gna.gna_axis_tiling``) and ``kv_block`` plans (step 1, no padding)."""
    starts = [a.kv_pos[:, 0][plan.tile_axes[:, i]] for i, a in enumerate(plan.axes)]
    lens = [(a.kv_pos >= 0).sum(1)[plan.tile_axes[:, i]] for i, a in enumerate(plan.axes)]
    return torch.stack(starts, 1), torch.stack(lens, 1)


@dataclass(frozen=True)
class KernelPlan:
    """A `BlockPlan` as the kernel reads it, on one device.

    q_index [T, Tq] / kv_index [T, R] int32 (``N`` = padding); tile_full [T] int8 (1 = no element
    mask), with the full tiles first (``num_full`` of them: they run as their own launch, with no
    mask code); kv_box [T, 6] int32 (key start and length per axis, leading axes padded) for GNA
    plans, else empty: the kernel then computes key indices instead of loading them; geometry =
    grid (3) and key steps (3, the dilation); for fully block-sparse plans (``plan.kv_block``, a
    multiple of `BLOCK_TOKENS` tokens) ``kv_block`` > 0 selects block-major order: ``perm`` = (perm,
    inverse) permutes the tokens, q_index is in permuted positions, kv_box and the key lengths of
    axis_shape are in blocks and geometry is the block grid;
    tile_axes [T, 3] int32 and masks (3 x int8 ``[tiles_a, q_len_a, kv_len_a]``) only for generic
    masked plans; axis_shape = (q_len_0..2, kv_len_0..2); gna = grid, window, stride, dilation
    (3 each, leading axes padded with length 1) for GNA plans with partial tiles, else empty.
    """

    mask_mode: int
    q_index: Tensor
    kv_index: Tensor
    tile_full: Tensor
    tile_axes: Tensor
    masks: tuple[Tensor, ...]
    axis_shape: tuple[int, ...]
    gna: tuple[int, ...]
    kv_box: Tensor
    geometry: tuple[int, ...]
    num_full: int
    perm: tuple[Tensor, ...] = ()
    kv_block: int = 0

    @staticmethod
    def build(plan: BlockPlan, device: torch.device) -> "KernelPlan":
        # No data-dependent Python here (no int() of a tensor): torch.compile traces through it.
        n_pad = 3 - len(plan.grid)
        mode = MASK_NONE if not plan.has_mask else MASK_GNA if plan.gna is not None else MASK_LOADED
        fulls = [full or mode == MASK_NONE for _, _, full in plan.groups]
        # plans put full tiles first (group id 0 sorts first): one launch for them, one for the rest
        num_full = sum(end - start for (start, end, _), full in zip(plan.groups, fulls) if full)
        if any(fulls[i + 1] and not fulls[i] for i in range(len(fulls) - 1)):
            raise ValueError(f"plan groups {plan.groups} do not put the full tiles first")
        tile_full = torch.zeros(plan.num_tiles, dtype=torch.int8)
        tile_full[:num_full] = 1
        empty = torch.zeros(0, dtype=torch.int32, device=device)
        masks: tuple[Tensor, ...] = ()
        tile_axes = empty
        per_axis_len = [(1, 1)] * n_pad + [(a.q_pos.shape[1], a.kv_pos.shape[1]) for a in plan.axes]
        axis_shape = tuple(q for q, _ in per_axis_len) + tuple(r for _, r in per_axis_len)
        if mode == MASK_LOADED:
            per_axis = []
            for axis in plan.axes:
                qa, ra = axis.q_pos.shape[1], axis.kv_pos.shape[1]
                m = axis.mask if axis.mask is not None else torch.ones((axis.num_tiles, qa, ra), dtype=torch.bool)
                per_axis.append(m)
            per_axis = [torch.ones((1, 1, 1), dtype=torch.bool)] * n_pad + per_axis
            masks = tuple(m.to(device=device, dtype=torch.int8).contiguous() for m in per_axis)
            pad = torch.zeros((plan.num_tiles, n_pad), dtype=torch.long)
            tile_axes = torch.cat([pad, plan.tile_axes], 1).to(device=device, dtype=torch.int32).contiguous()
        gna: tuple[int, ...] = ()
        if mode == MASK_GNA:
            assert plan.gna is not None
            params = [(1, 1, 1, 1)] * n_pad + [(g, *p) for g, p in zip(plan.grid, plan.gna)]
            gna = tuple(p[i] for i in range(4) for p in params)  # grid x3, window x3, stride x3, dilation x3
        grid3 = (1,) * n_pad + tuple(plan.grid)
        if plan.kv_block is not None and num_full == plan.num_tiles and math.prod(plan.kv_block) % BLOCK_TOKENS == 0:
            return KernelPlan._block_major(plan, device, mode, axis_shape, tile_full)
        kv_box, steps = empty, (1, 1, 1)
        if plan.gna is not None and plan.kv_index.shape[1] > 0:
            starts, lens = _key_box(plan)
            t = plan.num_tiles
            zeros, ones = torch.zeros((t, n_pad), dtype=torch.long), torch.ones((t, n_pad), dtype=torch.long)
            kv_box = torch.cat([zeros, starts, ones, lens], 1).to(device=device, dtype=torch.int32).contiguous()
            steps = (1,) * n_pad + tuple(d for _, _, d in plan.gna)
        return KernelPlan(
            mode,
            plan.q_index.to(device=device, dtype=torch.int32).contiguous(),
            plan.kv_index.to(device=device, dtype=torch.int32).contiguous(),
            tile_full.to(device),
            tile_axes,
            masks,
            axis_shape,
            gna,
            kv_box,
            grid3 + steps,
            num_full,
        )

    @staticmethod
    def _block_major(plan: BlockPlan, device: torch.device, mode: int, axis_shape: tuple[int, ...],
                     tile_full: Tensor) -> "KernelPlan":  # fmt: skip
        """Block-major token order for fully block-sparse plans: tokens are permuted so that each
        ``plan.kv_block`` block is ``prod(kv_block)`` consecutive rows; a tile's keys are then whole
        blocks, given as a box in block units. Queries are still gathered (through a remapped
        ``q_index``); ``perm`` = (perm, inverse): permuted row ``p`` is token ``perm[p]``."""
        assert plan.kv_block is not None
        n_pad = 3 - len(plan.grid)
        kb = (1,) * n_pad + plan.kv_block
        grid3 = (1,) * n_pad + tuple(plan.grid)
        nb = tuple(g // b for g, b in zip(grid3, kb))
        coords = torch.cartesian_prod(*[torch.arange(n) for n in nb + kb]).reshape(-1, 6)  # block, then inside
        x = [coords[:, a] * kb[a] + coords[:, 3 + a] for a in range(3)]
        perm = (x[0] * grid3[1] + x[1]) * grid3[2] + x[2]
        n = plan.num_tokens
        inv = torch.empty(n + 1, dtype=torch.long)
        inv[perm] = torch.arange(n)
        inv[n] = n  # padding stays padding
        starts, lens = _key_box(plan)
        t = plan.num_tiles
        kbt = torch.tensor(plan.kv_block)
        zeros, ones = torch.zeros((t, n_pad), dtype=torch.long), torch.ones((t, n_pad), dtype=torch.long)
        box = torch.cat([zeros, starts // kbt, ones, lens // kbt], 1)
        blocks = tuple(r // b for r, b in zip(axis_shape[3:], kb))
        empty = torch.zeros(0, dtype=torch.int32, device=device)
        return KernelPlan(
            MASK_NONE,
            inv[plan.q_index].to(device=device, dtype=torch.int32).contiguous(),
            plan.kv_index.to(device=device, dtype=torch.int32).contiguous(),  # grid order: reference only
            tile_full.to(device),
            empty,
            (),
            axis_shape[:3] + blocks,
            (),
            box.to(device=device, dtype=torch.int32).contiguous(),
            nb + (1, 1, 1),
            plan.num_tiles,
            (perm.to(device), inv[:n].to(device)),
            math.prod(kb),
        )

    @staticmethod
    def dense_queries(num_tokens: int, device: torch.device) -> "KernelPlan":
        """Every query in one tile with no sparse keys: the kernel then attends the extra keys only."""
        return KernelPlan(
            MASK_NONE,
            torch.arange(num_tokens, dtype=torch.int32, device=device)[None],
            torch.zeros((1, 0), dtype=torch.int32, device=device),
            torch.ones(1, dtype=torch.int8, device=device),
            torch.zeros(0, dtype=torch.int32, device=device),
            (),
            (1, 1, 1, 1, 1, 1),
            (),
            torch.zeros(0, dtype=torch.int32, device=device),
            (1, 1, num_tokens, 1, 1, 1),
            1,
        )

    def op_args(self) -> tuple:
        """The plan fields of `block_sparse_attention_op`, in its order (after q, k, v)."""
        return (self.q_index, self.kv_index, self.kv_box, self.tile_axes, list(self.masks), list(self.axis_shape),
                list(self.gna), list(self.geometry), self.mask_mode, self.num_full, list(self.perm),
                self.kv_block)  # fmt: skip


# Device copies of plans, dropped with the plan (plans are cached per shape by the methods).
_KERNEL_PLANS: "weakref.WeakKeyDictionary[BlockPlan, dict[torch.device, KernelPlan]]" = weakref.WeakKeyDictionary()


def kernel_plan(plan: BlockPlan, device: torch.device) -> KernelPlan:
    """The `KernelPlan` of ``plan`` on ``device``, built once per (plan, device)."""
    per_device = _KERNEL_PLANS.setdefault(plan, {})
    if device not in per_device:
        per_device[device] = KernelPlan.build(plan, device)
    return per_device[device]
