"""Triton block-sparse flash attention forward over a `BlockPlan`; returns ``(out, lse)``.

One program computes ``BLOCK_M`` query slots of one plan tile for one (batch, head): it gathers
those queries through ``plan.q_index``, then runs an online softmax over the tile's key slots
(``plan.kv_index``, ``BLOCK_N`` at a time) and finally over the dense extra keys (text tokens,
with an optional key-padding mask) that every query attends. Both key sets share one softmax, so
text keys cost no second pass and no merge.

Full and partial tiles (the plan's groups say which) run as two launches of the kernel, so the
full-tile loop has no element-mask code at all. How a partial tile's mask is obtained depends on the plan:
  - GNA plans (``plan.gna`` set) compute it in the kernel from integer arithmetic on the grid
    coordinates: per axis, same dilation group and key inside ``[start(query), start + window)``
    with NATTEN's centre-leader rule (see ``methods/gna.py``). Nothing is loaded.
  - Any other plan loads its small per-axis masks (``AxisTiling.mask``, ``[tiles, q_len, kv_len]``
    per axis, as int8) and ANDs them; that costs three tiny gathers per partial key block.
Key indices: when every tile's keys are, per axis, an arithmetic progression (GNA plans always are:
a window start and the dilation), the kernel computes each key's token index from six per-tile
scalars; nothing is loaded before a K/V load, which lets the compiler pipeline K/V 3-4 deep (a
gathered index defeats that: 1-2 buffers, see ``scripts/triton_report.py``). Other plans gather
``plan.kv_index``.
Block-major order: when every tile is full and its keys are whole aligned blocks (``plan.kv_block``,
GNA at tile-aligned strides: 16x16 blocks at FLUX-4K stride 16x16, 6x8x8 at HunyuanVideo stride
16x8x8), q, k, v are permuted once per call so that each block is consecutive rows; every
``BLOCK_N`` keys are then one contiguous box, loaded by TMA (``tl.make_tensor_descriptor``, sm90+)
or by plain pointers (older GPUs), and the outputs are permuted back. Cost: four extra gathers of
``[B, S, H, D]`` (q, k, v, out) plus lse, i.e. about 8 x 0.4 GB of memory traffic at FLUX-4K with
24 heads of 128 in bf16 (an estimate: ~1 ms at H100 bandwidth, not measured).
Padding (tiles not a multiple of ``BLOCK_M``/``BLOCK_N``, ragged tiles, head dims that are not a
power of two) is masked on load and never read out of bounds.

fp16/bf16 inputs use fp32 accumulation; fp32 inputs use IEEE fp32 dots (small tiles of their own)
unless the caller passes ``allow_tf32=True``. Runs on CUDA (and ROCm) tensors. Under
``TRITON_INTERPRET=1`` it also runs on CPU tensors, which is how the tests check it against
``reference.py``; the interpreter needs two concessions that are made only there: one autotune
config, and an fp32 upcast before ``tl.dot`` (it multiplies the raw bits of bf16). Forward only
(inference): the op has no autograd formula.

File order follows Triton's fused-attention tutorial: jit helpers, autotuned kernel, host wrapper,
public functions.
"""

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from .plan import BlockPlan
from .triton_plan import MASK_LOADED, MASK_NONE, KernelPlan, kernel_plan

#: Read once at import: the interpreter must be chosen before any kernel runs anyway.
INTERPRET = bool(getattr(getattr(triton, "knobs", None), "runtime", None) and triton.knobs.runtime.interpret) or (
    os.environ.get("TRITON_INTERPRET", "0") == "1"
)
#: Read once at import: autotune only the first kept config per launch (GPU test runs, where
#: benchmarking every config of every test shape would take many minutes).
QUICK_TUNE = os.environ.get("DIFFATTN_TRITON_QUICK_TUNE", "0") == "1"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)  # read inside the kernel: must be a constexpr global


# ----------------------------------------------------------------------------------- jit helpers


@triton.jit
def _coords(idx, G1, G2):
    """Grid coordinates (frame, row, column) of flattened token indices on a ``(G0, G1, G2)`` grid."""
    return idx // (G1 * G2), (idx // G2) % G1, idx % G2


@triton.jit
def _gna_query(x, L, K, S, DIL):
    """Dilation group and window start (in group coordinates) of queries at axis coordinate ``x``.

    NATTEN's rule: the leader of a stride group is its centre query (right-hand for even strides),
    clipped to the group's sub-axis; the window of ``K`` group tokens starts at the leader minus
    ``K // 2``, clamped inside the sub-axis. Every operand is non-negative before the clamps, so
    truncating and flooring division agree.
    """
    g = x % DIL
    xc = x // DIL
    group_len = (L - g + DIL - 1) // DIL
    leader = tl.minimum((xc // S) * S + S // 2, group_len - 1)
    start = tl.minimum(tl.maximum(leader - K // 2, 0), group_len - K)
    return g, start


@triton.jit
def _gna_key_mask(g0, st0, g1, st1, g2, st2, kidx, G1, G2, W0, W1, W2, D0, D1, D2):
    """``[BLOCK_M, BLOCK_N]`` GNA mask of keys ``kidx`` for queries given per axis as (dilation
    group, window start): per axis, same group and key inside ``[start, start + window)``."""
    x0, x1, x2 = _coords(kidx, G1, G2)
    ok = (g0[:, None] == (x0 % D0)[None, :]) & ((x0 // D0)[None, :] >= st0[:, None])
    ok = ok & ((x0 // D0)[None, :] < st0[:, None] + W0)
    ok = ok & (g1[:, None] == (x1 % D1)[None, :]) & ((x1 // D1)[None, :] >= st1[:, None])
    ok = ok & ((x1 // D1)[None, :] < st1[:, None] + W1)
    ok = ok & (g2[:, None] == (x2 % D2)[None, :]) & ((x2 // D2)[None, :] >= st2[:, None])
    return ok & ((x2 // D2)[None, :] < st2[:, None] + W2)


@triton.jit
def _loaded_mask(M0, M1, M2, ta0, ta1, ta2, i0, i1, i2, slot, ok, QA0, QA1, QA2, RA0, RA1, RA2):
    """``[BLOCK_M, BLOCK_N]`` mask of a generic plan: the AND of its per-axis masks ``Ma [tiles_a,
    QA_a, RA_a]`` (int8) at the tile's axis tiles ``ta_a`` and the slots' per-axis positions."""
    r0 = slot // (RA1 * RA2)
    r1 = (slot // RA2) % RA1
    r2 = slot % RA2
    m = tl.load(M0 + ta0 * (QA0 * RA0) + i0[:, None] * RA0 + r0[None, :], mask=ok, other=0) != 0
    m = m & (tl.load(M1 + ta1 * (QA1 * RA1) + i1[:, None] * RA1 + r1[None, :], mask=ok, other=0) != 0)
    return m & (tl.load(M2 + ta2 * (QA2 * RA2) + i2[:, None] * RA2 + r2[None, :], mask=ok, other=0) != 0)


@triton.jit
def _softmax_step(acc, m_i, l_i, s, v, INPUT_PRECISION: tl.constexpr):
    """One online-softmax update with scores ``s`` (log2 units, -inf = masked) and values ``v``.

    A row with every score so far masked keeps ``m = -inf``; it is shifted by 0 instead, so it
    contributes exact zeros rather than NaN (a sliding window leaves many such rows per block).
    """
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=INPUT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _box_keys(slot, R, N, box, G1, G2, KS0, KS1, KS2, RA1, RA2):
    """Key token indices of slots ``slot`` of a tile whose keys are, per axis, ``len_a`` positions
    ``start_a + KS_a * r`` (``box`` = start0..2, len0..2): the index is arithmetic in the loop
    counter, so no load precedes the K/V load and the software pipeliner can run ahead."""
    s0, s1, s2, l0, l1, l2 = box
    r0 = slot // (RA1 * RA2)
    r1 = (slot // RA2) % RA1
    r2 = slot % RA2
    ok = (slot < R) & (r0 < l0) & (r1 < l1) & (r2 < l2)
    return tl.where(ok, (s0 + KS0 * r0) * (G1 * G2) + (s1 + KS1 * r1) * G2 + (s2 + KS2 * r2), N)


@triton.jit
def _block_keys(slot, R, N, box, NB1, NB2, RA1, RA2, KBLOCK):
    """Key token indices in *block-major* token order (tokens permuted so that each block of
    ``KBLOCK`` tokens is contiguous): the tile's keys are whole blocks, per axis ``len_a`` blocks
    from ``start_a`` on a ``(NB0, NB1, NB2)`` block grid (``box`` in block units)."""
    s0, s1, s2, l0, l1, l2 = box
    blk = slot // KBLOCK
    r0 = blk // (RA1 * RA2)
    r1 = (blk // RA2) % RA1
    r2 = blk % RA2
    ok = (slot < R) & (r0 < l0) & (r1 < l1) & (r2 < l2)
    return tl.where(ok, (((s0 + r0) * NB1 + (s1 + r1)) * NB2 + (s2 + r2)) * KBLOCK + slot % KBLOCK, N)


@triton.jit
def _sparse_keys(
    acc, m_i, l_i, q, t, K_base, V_base, sks, svs, KV_INDEX, R, N, qk_scale, offs_n, offs_d, d_ok,
    g0, st0, g1, st1, g2, st2, G1, G2, W0, W1, W2, D0, D1, D2,
    M0, M1, M2, ta0, ta1, ta2, i0, i1, i2, q_ok, QA0, QA1, QA2, RA0, RA1, RA2,
    box, KS0, KS1, KS2, KBLOCK, HEAD_DIM,
    MASK_MODE: tl.constexpr, INDEX_MODE: tl.constexpr, USE_TMA: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Online softmax over the ``R`` key slots of tile ``t``; ``MASK_MODE`` 0 = full tile (no
    element mask code at all). ``INDEX_MODE``: 0 = key indices gathered from ``KV_INDEX``, 1 =
    computed from ``box`` (grid order), 2 = block-major order, where each ``BLOCK_N`` keys are
    contiguous rows (``USE_TMA``: loaded as one tensor-memory-access box, sm90+)."""
    if USE_TMA:
        k_desc = tl.make_tensor_descriptor(K_base, [N, HEAD_DIM], [sks, 1], [BLOCK_N, BLOCK_D])
        v_desc = tl.make_tensor_descriptor(V_base, [N, HEAD_DIM], [svs, 1], [BLOCK_N, BLOCK_D])
    for n0 in range(0, R, BLOCK_N):
        slot = n0 + offs_n
        slot_ok = slot < R
        if INDEX_MODE == 2:
            kidx = _block_keys(slot, R, N, box, G1, G2, RA1, RA2, KBLOCK)
        elif INDEX_MODE == 1:
            kidx = _box_keys(slot, R, N, box, G1, G2, KS0, KS1, KS2, RA1, RA2)
        else:
            kidx = tl.load(KV_INDEX + t * R + slot, mask=slot_ok, other=N)
        k_ok = kidx < N  # padding slots of ragged tiles point at token N
        if USE_TMA:  # BLOCK_N divides KBLOCK: slot n0 starts a run of BLOCK_N rows, all live or all padding
            row0 = _block_keys(n0, R, N, box, G1, G2, RA1, RA2, KBLOCK)
            row0 = tl.where(row0 < N, row0, 0)
            k = k_desc.load([row0, 0])
            v = v_desc.load([row0, 0])
        else:
            rows = kidx.to(tl.int64)
            # rows of D contiguous elements: [BLOCK_N, BLOCK_D] loads vectorize along D, then transpose
            k = tl.load(K_base + rows[:, None] * sks + offs_d[None, :], mask=k_ok[:, None] & d_ok[None, :], other=0)
            v = tl.load(V_base + rows[:, None] * svs + offs_d[None, :], mask=k_ok[:, None] & d_ok[None, :], other=0)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
        if MASK_MODE == 1:
            keep = k_ok[None, :] & _gna_key_mask(g0, st0, g1, st1, g2, st2, kidx, G1, G2, W0, W1, W2, D0, D1, D2)
        elif MASK_MODE == 2:
            ok = q_ok[:, None] & slot_ok[None, :]
            keep = _loaded_mask(M0, M1, M2, ta0, ta1, ta2, i0, i1, i2, slot, ok, QA0, QA1, QA2, RA0, RA1, RA2)
        else:
            keep = k_ok[None, :]
        s = tl.where(keep, s, float("-inf"))
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, s, v, INPUT_PRECISION)
    return acc, m_i, l_i


@triton.jit
def _extra_keys(
    acc, m_i, l_i, q, EK_base, EV_base, seks, sevs, EM_base, T_EXTRA, qk_scale, offs_n, offs_d, d_ok,
    HAS_EXTRA_MASK: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Online softmax over the ``T_EXTRA`` dense extra keys (text), honouring the key-padding mask."""
    for n0 in range(0, T_EXTRA, BLOCK_N):
        j = n0 + offs_n
        in_range = j < T_EXTRA
        rows = j.to(tl.int64)
        k = tl.load(EK_base + rows[:, None] * seks + offs_d[None, :], mask=in_range[:, None] & d_ok[None, :], other=0)
        v = tl.load(EV_base + rows[:, None] * sevs + offs_d[None, :], mask=in_range[:, None] & d_ok[None, :], other=0)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
        keep = in_range
        if HAS_EXTRA_MASK:
            keep = keep & (tl.load(EM_base + j, mask=in_range, other=0) != 0)
        s = tl.where(keep[None, :], s, float("-inf"))
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, s, v, INPUT_PRECISION)
    return acc, m_i, l_i


# -------------------------------------------------------------------------------- autotuned kernel


# Shared memory per block (bytes) by compute capability major.minor; configs whose estimate exceeds
# it cannot launch. sm80/sm90: 163 / 227 KB opt-in; consumer Ampere/Ada (8.6/8.9): 99 KB.
SMEM_LIMIT = {(8, 0): 163 * 1024, (8, 6): 99 * 1024, (8, 7): 163 * 1024, (8, 9): 99 * 1024, (9, 0): 227 * 1024}
DEFAULT_SMEM_LIMIT = 99 * 1024


def _keep(cfg: triton.Config) -> bool:
    """Drop 16-bit configs that cannot be fast on any GPU: 8 warps on a 64-row block idle half the
    warps; a 128x128 score tile spills with 4 warps; BN128 at 4 stages needs 273-288 KB of shared
    memory at D=128 (ptxas, sm90), over every GPU's limit."""
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    if cfg.num_warps == 8 and bm < 128:
        return False
    if bn == 128 and cfg.num_stages >= 4:
        return False
    return not (cfg.num_warps == 4 and bm * bn >= 128 * 128)


_HALF_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm in (128, 64)
    for bn in (64, 128, 32)
    for w in (8, 4)
    for s in (3, 4, 2)
]
_HALF_CONFIGS = list(filter(_keep, _HALF_CONFIGS))
# fp32 runs IEEE dots on CUDA cores (no tensor cores): the 16-bit tiles spill 1.8-38 KB per thread,
# so it gets small tiles of its own. At D=128 these are spill-free on sm80; on sm90 they still spill
# 0.6-1.7 KB (scripts/triton_report.py --dtype fp32). 32x32 with 4 warps spilled on both: dropped.
# TF32 (tensor cores, ~1e-3 error) only when the caller asks.
_FP32_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=2)
    for bm, bn, w in ((64, 32, 8), (64, 16, 4))
]
_CONFIGS = _HALF_CONFIGS + _FP32_CONFIGS
if INTERPRET:  # the interpreter cannot benchmark: autotune with more than one config fails there
    _CONFIGS = _HALF_CONFIGS[:1]


def smem_estimate(cfg: triton.Config, block_d: int, elem_bytes: int) -> int:
    """Shared memory of a config in bytes, as the pipeliner lays it out: ``num_stages - 1`` K and V
    buffers plus one more in flight, Q staged once (an upper estimate; the report prints ptxas's)."""
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    return (2 * cfg.num_stages * bn + bm) * block_d * elem_bytes


def kept_configs(
    configs: list[triton.Config],
    *,
    fp32: bool,
    block_d: int,
    partial: bool,
    tq: int,
    capability: tuple[int, int],
    kv_block: int = 0,
) -> list[triton.Config]:
    """The configs worth benchmarking for one launch (what autotune prunes to; the report compiles these).

    fp32 (without TF32) gets the small-tile set. 16-bit, from ptxas on sm80/sm90 (scripts/triton_report.py):
      - no query block larger than the plan tile needs;
      - at D >= 128: no BLOCK_N=128 (spills 16-128 B, 224 KB of shared memory at 3 stages), no BLOCK_M=128
        with 4 warps (spills 88-652 B), and in partial-tile launches no BLOCK_M=64 (the mask spills 40-56 B);
      - in partial-tile launches no BLOCK_N=128 (the mask spills 0.4-5.3 KB on sm80);
      - BLOCK_N=32 only for D > 128, where larger key blocks do not fit; there no BLOCK_N=128, <= 2 stages;
      - otherwise at least 3 stages: 2 stages leave a single K/V buffer in the sparse loop (no overlap);
      - nothing over the GPU's shared memory;
      - block-major launches (``kv_block`` tokens per key block): BLOCK_N divides ``kv_block``.
    """
    fp32_ids = {id(c) for c in _FP32_CONFIGS}
    out = [c for c in configs if (id(c) in fp32_ids) == fp32]
    out = [c for c in out if c.kwargs["BLOCK_M"] <= max(64, triton.next_power_of_2(tq))]
    if kv_block:
        out = [c for c in out if kv_block % c.kwargs["BLOCK_N"] == 0]
    if not fp32:
        if block_d >= 128:
            out = [c for c in out if c.kwargs["BLOCK_N"] < 128]
            out = [c for c in out if not (c.kwargs["BLOCK_M"] == 128 and c.num_warps == 4)]
            if partial:
                out = [c for c in out if c.kwargs["BLOCK_M"] == 128]
        if partial:
            out = [c for c in out if c.kwargs["BLOCK_N"] < 128]
        if block_d > 128:
            out = [c for c in out if c.kwargs["BLOCK_N"] <= 64 and c.num_stages <= 2]
        else:
            out = [c for c in out if c.kwargs["BLOCK_N"] > 32 and c.num_stages >= 3]
        limit = SMEM_LIMIT.get(capability, DEFAULT_SMEM_LIMIT)
        out = [c for c in out if smem_estimate(c, block_d, 2) <= limit]
    return out or [c for c in configs if (id(c) in fp32_ids) == fp32][-1:] or configs[:1]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    """Autotune's shape-dependent pruning: `kept_configs` for this launch's dtype, head dim, mask
    mode, plan tile and the GPU of the tensors."""
    args = {**named_args, **kwargs}
    q = args["Q"]
    capability = (9, 0)
    if getattr(q, "is_cuda", False) and torch.version.hip is None:
        capability = torch.cuda.get_device_capability(q.device)
    fp32 = q.dtype == torch.float32 and args["INPUT_PRECISION"] == "ieee"
    kept = kept_configs(
        configs, fp32=fp32, block_d=int(args["BLOCK_D"]), partial=int(args["MASK_MODE"]) != 0, tq=int(args["TQ"]),
        capability=capability, kv_block=int(args["KBLOCK"]) if int(args["INDEX_MODE"]) == 2 else 0,
    )  # fmt: skip
    return kept[:1] if QUICK_TUNE else kept


@triton.autotune(
    configs=_CONFIGS,
    key=["TQ", "R", "T_EXTRA", "KBLOCK", "BLOCK_D", "MASK_MODE", "INDEX_MODE", "USE_TMA", "HAS_EXTRA_MASK",
         "INPUT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def _bsa_fwd_kernel(
    Q, K, V, EK, EV, EMASK, OUT, LSE,
    Q_INDEX, KV_INDEX, KV_BOX, TILE_AXES, M0, M1, M2,
    sqb, sqs, sqh, skb, sks, skh, svb, svs, svh,
    sekb, seks, sekh, sevb, sevs, sevh, semb,
    sob, sos, soh, slb, sls, slh,
    H, N, TQ, R, T_EXTRA, qk_scale, TILE0, KBLOCK,
    G0, G1, G2, W0, W1, W2, S0, S1, S2, D0, D1, D2, KS0, KS1, KS2,
    QA0, QA1, QA2, RA0, RA1, RA2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_MODE: tl.constexpr, INDEX_MODE: tl.constexpr,
    USE_TMA: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_EXTRA_MASK: tl.constexpr, UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Grid ``(tiles * cdiv(TQ, BLOCK_M), B * H)`` over plan tiles ``TILE0 ..``, all of one kind:
    full (``MASK_MODE`` 0) or partial. Query rows are gathered through ``Q_INDEX`` (int32, ``N`` =
    padding); key rows are gathered through ``KV_INDEX`` (``INDEX_MODE`` 0) or computed from
    ``KV_BOX [T, 6]``: in grid order (1) or, with q/k/v permuted block-major, as whole blocks of
    ``KBLOCK`` rows (2); ``qk_scale`` is the softmax scale times log2(e)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    q_blocks = tl.cdiv(TQ, BLOCK_M)
    t = TILE0 + pid // q_blocks
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)

    offs_m = (pid % q_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    slot_q_ok = offs_m < TQ
    qidx = tl.load(Q_INDEX + t * TQ + offs_m, mask=slot_q_ok, other=N)
    q_ok = qidx < N
    q_rows = qidx.to(tl.int64)
    q = tl.load(
        Q + b * sqb + h * sqh + q_rows[:, None] * sqs + offs_d[None, :], mask=q_ok[:, None] & d_ok[None, :], other=0.0
    )
    if UPCAST:  # the interpreter's tl.dot multiplies the raw bits of bf16: compute in fp32 there
        q = q.to(tl.float32)

    # Query-side mask terms, computed once per program (placeholders where the mode needs none).
    g0, st0, g1, st1, g2, st2 = 0, 0, 0, 0, 0, 0
    ta0, ta1, ta2, i0, i1, i2 = 0, 0, 0, 0, 0, 0
    if MASK_MODE == 1:
        x0, x1, x2 = _coords(qidx, G1, G2)
        g0, st0 = _gna_query(x0, G0, W0, S0, D0)
        g1, st1 = _gna_query(x1, G1, W1, S1, D1)
        g2, st2 = _gna_query(x2, G2, W2, S2, D2)
    if MASK_MODE == 2:
        ta0 = tl.load(TILE_AXES + t * 3)
        ta1 = tl.load(TILE_AXES + t * 3 + 1)
        ta2 = tl.load(TILE_AXES + t * 3 + 2)
        i0 = offs_m // (QA1 * QA2)
        i1 = (offs_m // QA2) % QA1
        i2 = offs_m % QA2

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)

    K_base = K + b * skb + h * skh
    V_base = V + b * svb + h * svh
    box = (0, 0, 0, 0, 0, 0)
    if INDEX_MODE != 0:  # six scalars per program, loaded before the loop
        box = (
            tl.load(KV_BOX + t * 6), tl.load(KV_BOX + t * 6 + 1), tl.load(KV_BOX + t * 6 + 2),
            tl.load(KV_BOX + t * 6 + 3), tl.load(KV_BOX + t * 6 + 4), tl.load(KV_BOX + t * 6 + 5),
        )  # fmt: skip
    acc, m_i, l_i = _sparse_keys(
        acc, m_i, l_i, q, t, K_base, V_base, sks, svs, KV_INDEX, R, N, qk_scale, offs_n, offs_d, d_ok,
        g0, st0, g1, st1, g2, st2, G1, G2, W0, W1, W2, D0, D1, D2,
        M0, M1, M2, ta0, ta1, ta2, i0, i1, i2, slot_q_ok, QA0, QA1, QA2, RA0, RA1, RA2,
        box, KS0, KS1, KS2, KBLOCK, HEAD_DIM,
        MASK_MODE, INDEX_MODE, USE_TMA, BLOCK_N, BLOCK_D, UPCAST, INPUT_PRECISION,
    )  # fmt: skip
    if HAS_EXTRA:
        acc, m_i, l_i = _extra_keys(
            acc, m_i, l_i, q, EK + b * sekb + h * sekh, EV + b * sevb + h * sevh, seks, sevs, EMASK + b * semb,
            T_EXTRA, qk_scale, offs_n, offs_d, d_ok, HAS_EXTRA_MASK, BLOCK_N, UPCAST, INPUT_PRECISION,
        )  # fmt: skip

    # A query with no live key (only possible with an all-padded extra mask and no sparse keys)
    # gets out = 0 and lse = -inf, like the reference.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_safe)) * LN2)
    tl.store(
        OUT + b * sob + h * soh + q_rows[:, None] * sos + offs_d[None, :],
        out.to(OUT.dtype.element_ty),
        mask=q_ok[:, None] & d_ok[None, :],
    )
    tl.store(LSE + b * slb + h * slh + q_rows * sls, lse, mask=q_ok)


# ------------------------------------------------------------------------------------ host wrapper


def _tma_scratch(size: int, alignment: int, stream: int | None) -> Tensor:
    """Global scratch for the kernel's on-device TMA descriptors (triton asks through set_allocator)."""
    return torch.empty(size, dtype=torch.int8, device="cpu" if INTERPRET else "cuda")


def _can_use_tma(k: Tensor, v: Tensor) -> bool:
    """Whether block-major K/V rows can be loaded with TMA (sm90+, CUDA): it needs 16-byte aligned
    bases and row/head strides and rows of >= 16 bytes. The pointer path serves every other case."""
    if not k.is_cuda or torch.version.hip is not None or INTERPRET:
        return False
    if torch.cuda.get_device_capability(k.device)[0] < 9:
        return False
    return all(
        t.data_ptr() % 16 == 0 and (t.stride(1) * t.element_size()) % 16 == 0
        and (t.stride(2) * t.element_size()) % 16 == 0 and t.shape[-1] * t.element_size() >= 16
        for t in (k, v)
    )  # fmt: skip


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@torch.library.custom_op("diffattn::block_sparse_attention", mutates_args=())
def block_sparse_attention_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_index: Tensor,
    kv_index: Tensor,
    kv_box: Tensor,
    tile_axes: Tensor,
    masks: list[Tensor],
    axis_shape: list[int],
    gna: list[int],
    geometry: list[int],
    mask_mode: int,
    num_full: int,
    perm: list[Tensor],
    kv_block: int,
    extra_k: Tensor | None,
    extra_v: Tensor | None,
    extra_mask: Tensor | None,
    scale: float,
    allow_tf32: bool = False,
) -> tuple[Tensor, Tensor]:
    """The kernel as an opaque op, so ``torch.compile`` traces through pipelines that use it. Inputs are
    `KernelPlan.op_args()`; returns ``(out [B, S, H, D], lse [B, S, H] fp32)``.

    Allocates the outputs and launches the kernel: once over the full tiles (no mask code), once over
    the partial ones. q, k, v ``[B, S, H, D]`` (any strides). Block-major plans permute q, k, v
    into block-major order first and the outputs back (four gathers of ``[B, S, H, D]``)."""
    block_major = kv_block > 0
    if block_major:  # one gather per tensor into block-major order; the outputs are gathered back
        q, k, v = (t.index_select(1, perm[0]) for t in (q, k, v))
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    b, s, h, d = q.shape
    out = q.new_empty((b, s, h, d))
    lse = q.new_empty((b, s, h), dtype=torch.float32)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    has_extra = extra_k is not None and extra_v is not None and extra_k.shape[1] > 0
    if has_extra:
        assert extra_k is not None and extra_v is not None
        ek, ev = _last_dim_contiguous(extra_k), _last_dim_contiguous(extra_v)
    else:
        ek, ev = q, v  # never read
    has_mask = has_extra and extra_mask is not None
    em = extra_mask.to(torch.int8).contiguous() if has_mask and extra_mask is not None else q_index
    m0, m1, m2 = masks if masks else (q_index, q_index, q_index)
    _, window, stride, dilation = (gna[i : i + 3] for i in range(0, 12, 3)) if gna else ([1] * 3,) * 4
    precision = "tf32" if q.dtype == torch.float32 and allow_tf32 else "ieee"
    tiles, tq = q_index.shape
    r = kv_index.shape[1]
    index_mode = 2 if block_major else 1 if kv_box.numel() else 0
    use_tma = block_major and _can_use_tma(k, v)
    if use_tma:
        triton.set_allocator(_tma_scratch)
    launches = [(0, num_full, MASK_NONE), (num_full, tiles - num_full, mask_mode)]
    # the launch runs on the tensors' GPU, not on whichever device is current
    guard = torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()
    with guard:
        for tile0, count, mode in launches:
            if count == 0:
                continue

            def grid(meta: dict, count: int = count) -> tuple[int, int]:
                return (count * triton.cdiv(tq, meta["BLOCK_M"]), b * h)

            _bsa_fwd_kernel[grid](
                q, k, v, ek, ev, em, out, lse,
                q_index, kv_index, kv_box if index_mode else q_index, tile_axes if mode == MASK_LOADED else q_index,
                m0, m1, m2,
                q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                v.stride(0), v.stride(1), v.stride(2),
                ek.stride(0), ek.stride(1), ek.stride(2), ev.stride(0), ev.stride(1), ev.stride(2),
                em.stride(0) if has_mask else 0,
                out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1), lse.stride(2),
                h, s, tq, r, ek.shape[1] if has_extra else 0, scale * LOG2E, tile0, kv_block if block_major else 1,
                *geometry[:3], *window, *stride, *dilation, *geometry[3:],
                *axis_shape,
                HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), MASK_MODE=mode, INDEX_MODE=index_mode,
                USE_TMA=use_tma, HAS_EXTRA=has_extra, HAS_EXTRA_MASK=has_mask, UPCAST=INTERPRET,
                INPUT_PRECISION=precision,
            )  # fmt: skip
    if block_major:
        return out.index_select(1, perm[1]), lse.index_select(1, perm[1])
    return out, lse


@block_sparse_attention_op.register_fake
def _(q: Tensor, *plan_and_extras: object, **kwargs: object) -> tuple[Tensor, Tensor]:
    b, s, h, d = q.shape
    return q.new_empty((b, s, h, d)), q.new_empty((b, s, h), dtype=torch.float32)


# -------------------------------------------------------------------------------- public functions


def _check(q: Tensor, k: Tensor, v: Tensor, extra_k: Tensor | None, extra_v: Tensor | None,
           extra_mask: Tensor | None) -> None:  # fmt: skip
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must share one [B, S, H, D] shape; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.dtype not in SUPPORTED_DTYPES or not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"triton backend needs q, k, v of one dtype in float16, bfloat16, float32; got {q.dtype}")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"triton backend supports head dims up to {MAX_HEAD_DIM}, got {q.shape[-1]}")
    if (extra_k is None) != (extra_v is None):
        raise ValueError("extra_k and extra_v must be given together")
    if extra_k is not None and extra_v is not None:
        b, _, h, d = q.shape
        for name, t in (("extra_k", extra_k), ("extra_v", extra_v)):
            if t.dim() != 4 or t.shape[0] != b or t.shape[2:] != (h, d) or t.shape != extra_k.shape:
                raise ValueError(f"{name} must be [B={b}, T, H={h}, D={d}] like extra_k, got {tuple(t.shape)}")
            if t.dtype != q.dtype:
                raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
        if extra_mask is not None and tuple(extra_mask.shape) != (b, extra_k.shape[1]):
            raise ValueError(f"extra_mask must be bool [B={b}, T={extra_k.shape[1]}], got {tuple(extra_mask.shape)}")


def block_sparse_attention_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    plan: BlockPlan,
    *,
    extra_k: Tensor | None = None,
    extra_v: Tensor | None = None,
    extra_mask: Tensor | None = None,
    scale: float | None = None,
    allow_tf32: bool = False,
) -> tuple[Tensor, Tensor]:
    """Block-sparse attention over ``plan`` plus dense extra keys, in one kernel.

    Args:
        q, k, v: ``[B, S, H, D]``, ``S == plan.num_tokens`` (grid order); fp16, bf16 or fp32; D <= 256.
        plan: the tiles and keys each query attends.
        extra_k, extra_v: ``[B, T, H, D]`` keys every query also attends (text tokens), or None.
        extra_mask: bool ``[B, T]`` key padding of the extra keys (True = valid), or None.
        scale: softmax scale, default ``D ** -0.5``.
        allow_tf32: fp32 inputs only: run the dots in TF32 (tensor cores, about 1e-3 relative error)
            instead of IEEE fp32. Never implied by ``torch.backends.cuda.matmul.allow_tf32``.
    Returns:
        ``(out [B, S, H, D] in q's dtype, lse [B, S, H] fp32)``.
    """
    _check(q, k, v, extra_k, extra_v, extra_mask)
    if q.shape[1] != plan.num_tokens:
        raise ValueError(f"sequence length {q.shape[1]} does not match the plan's grid {plan.grid} ({plan.num_tokens})")
    kp = kernel_plan(plan, q.device)
    return torch.ops.diffattn.block_sparse_attention(
        q, k, v, *kp.op_args(), extra_k, extra_v, extra_mask, q.shape[-1] ** -0.5 if scale is None else scale,
        allow_tf32,
    )  # fmt: skip


def dense_extra_attention_triton(
    q: Tensor, extra_k: Tensor, extra_v: Tensor, extra_mask: Tensor | None = None, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Attention of every query over the extra keys only (no sparse part), e.g. for a partial merged
    elsewhere. q ``[B, S, H, D]``, extra_k/v ``[B, T, H, D]``, extra_mask bool ``[B, T]``.
    Returns ``(out [B, S, H, D], lse [B, S, H] fp32)``."""
    _check(q, q, q, extra_k, extra_v, extra_mask)
    kp = KernelPlan.dense_queries(q.shape[1], q.device)
    return torch.ops.diffattn.block_sparse_attention(
        q, q, q, *kp.op_args(), extra_k, extra_v, extra_mask, q.shape[-1] ** -0.5 if scale is None else scale,
    )  # fmt: skip
