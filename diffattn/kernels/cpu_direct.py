"""The CPU **direct** path: every query attends exactly its own keys, read in place, with no tile around them.

The tiled path (`diffattn.kernels.cpu`) gathers, per tile of queries, the union of their windows and runs the
CPU flash op on it with a mask: at 32x32 tokens and an 8x8 window, a 4x8 tile gathers 11x15 = 165 keys for
queries that each see 64, and the flash op on such small problems costs 2.3 ns per (query, key) pair against
0.9 for one dense call (measured, B 12, 4 heads of 32, 2 threads). This path computes only the 64 pairs, in a
small C++ kernel (``cpu_direct.cpp``) that computes 16 scores per vector: about 5 ns per pair on one thread
(head dim 32), 2.2x faster than the tiled path per call at window 8 (B 12, 4 heads: 11.8 against 26.2 ms on 2
threads). Wide windows with large heads (32x32, head dim 64) stay faster as tiles or strips, where the flash
op's matrix products pay; the cost model (`CpuCostModel.direct`) chooses per call.

It applies to plans whose every query sees the same number of keys, made of ``R`` runs of ``L`` consecutive
tokens along the last grid axis (`key_runs`): GNA at any window and stride without dilation on the last axis;
``runs [S, R]`` holds each query's run starts. fp32 and inference only (no autograd, no torch.compile tracing):
other calls take the tiled path.

The kernel is compiled at first use by ``torch.utils.cpp_extension`` (about 10 s, then cached on disk by
torch, keyed by the source, the flags and this CPU) and loaded as ``torch.ops.diffattn_direct``. Where it
cannot be built (no C++ compiler), `library` warns once with the reason and the engine never picks it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import platform
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .plan import AxisTiling, BlockPlan

SOURCE = Path(__file__).with_name("cpu_direct.cpp")
_FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast")
_BUILD_LOCK = threading.Lock()  # threads of one process that first want the kernel together build it once
logger = logging.getLogger("diffattn.kernels")


def _cpu_identity() -> str:
    """What the compiled code depends on besides its source and flags: ``-march=native`` builds for this CPU,
    so a cache shared by different machines (a network home) must not hand one machine's build to another."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _torch_openmp() -> Path | None:
    """The OpenMP runtime torch itself runs on (the Linux wheels bundle ``libgomp.so.1``), or None."""
    lib = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    return lib if lib.exists() else None


def _build(native: bool, openmp: bool) -> None:
    """Build and load the kernel. ``openmp``: ``at::parallel_for`` runs on torch's own OpenMP threads (linked to
    torch's runtime, not the compiler's: two runtimes would each keep a team spinning); else it runs serially."""
    from torch.utils.cpp_extension import load

    cflags = [*_FLAGS, *(["-march=native"] if native else []), *(["-fopenmp"] if openmp else [])]
    ldflags = ["-l:libgomp.so.1"] if openmp else []
    key = hashlib.sha1((SOURCE.read_text() + " ".join(cflags + ldflags) + _cpu_identity()).encode()).hexdigest()[:12]
    load(name=f"diffattn_direct_{key}", sources=[str(SOURCE)], extra_cflags=cflags, extra_ldflags=ldflags,
         is_python_module=False, verbose=False)


@functools.cache
def library() -> Any | None:
    """``torch.ops.diffattn_direct`` once the kernel is built and loaded (once per process), or None, with one
    warning saying why, where it cannot be built."""
    with _BUILD_LOCK:
        return _first_build()


def _first_build() -> Any | None:
    logger.info("loading the CPU direct attention kernel (built on this machine's first use: about 10 s)")
    errors = []
    openmp = _torch_openmp() is not None
    # the fastest build first; some compilers or targets refuse -march=native, some platforms torch's OpenMP
    for native, omp in dict.fromkeys([(True, openmp), (False, openmp), (False, False)]):
        try:
            _build(native, omp)
            return torch.ops.diffattn_direct
        except Exception as error:  # a missing compiler, a failed build: the tiled path still runs
            errors.append(f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error) else ''}")
    warnings.warn(
        "diffattn: the CPU direct attention kernel could not be built, so the CPU backend uses its tiled path "
        f"(exact, slower at small windows): {errors[-1]}", RuntimeWarning, stacklevel=2,
    )
    return None


def score_vectors(runs: int, run_len: int) -> int:
    """The 16-lane score vectors the kernel computes per query for ``runs`` runs of ``run_len`` keys: two runs of 8
    share one (when their number is even), else each run takes ``ceil(run_len / 16)``."""
    return runs // 2 if run_len == 8 and runs % 2 == 0 else runs * -(-run_len // 16)


def _axis_keys(axis: AxisTiling) -> Tensor | None:
    """``[length, n]``: the sorted key positions of each query position of one axis tiling, or None when the
    positions do not all see the same number of keys, or are not each in exactly one tile."""
    t, q_len = axis.q_pos.shape
    kv_len = axis.kv_pos.shape[1]
    real = axis.q_pos >= 0  # [t, q_len]
    live = (axis.kv_pos >= 0)[:, None, :].expand(t, q_len, kv_len) if axis.mask is None else axis.mask
    live = live & real[..., None]
    counts = live.sum(-1)[real]
    positions = axis.q_pos[real]
    if counts.numel() != axis.length or int(counts.min()) < 1 or int(counts.max()) != int(counts.min()):
        return None
    if not torch.equal(positions.sort().values, torch.arange(axis.length)):
        return None
    n = int(counts[0])
    keys = axis.kv_pos[:, None, :].expand(t, q_len, kv_len)[live].view(-1, n).sort(-1).values  # (tile, slot) order
    out = torch.empty(axis.length, n, dtype=torch.long)
    out[positions] = keys
    return out


def key_runs(plan: BlockPlan) -> tuple[Tensor, int] | None:
    """``(runs [S, R] int32, L)``: every query's keys as R runs of L consecutive tokens (the first token of each
    run, in grid order), or None when the plan's keys are not so made (a varying key count, dilation on the last
    axis). Separable plans: the keys of query ``(p_0, ..., p_m)`` are the product of each axis' keys of ``p_a``,
    so the runs are the products of the leading axes' keys, each with the last axis' run start."""
    keys = [_axis_keys(a) for a in plan.axes]
    if any(k is None for k in keys):
        return None
    last = keys[-1]
    assert last is not None
    if last.shape[1] > 1 and not bool((last[:, 1:] - last[:, :-1] == 1).all()):
        return None
    grid, m = plan.grid, len(plan.axes)
    lead = [k.shape[1] for k in keys[:-1]]  # type: ignore[union-attr]
    total = torch.zeros((1,) * (2 * m - 1), dtype=torch.long)
    for a, k in enumerate(keys):
        assert k is not None
        shape = [1] * (2 * m - 1)
        shape[a] = grid[a]
        if a < m - 1:
            shape[m + a] = k.shape[1]
            total = total + k.view(shape) * math.prod(grid[a + 1 :])
        else:
            total = total + k[:, 0].view(shape)
    runs = total.expand(*grid, *lead).reshape(plan.num_tokens, math.prod(lead)).to(torch.int32).contiguous()
    return runs, int(last.shape[1])


RangeRunner = Callable[[Callable[[int, int], None], list[tuple[int, int]]], None]


def attend(q: Tensor, k: Tensor, v: Tensor, runs: Tensor, run_len: int, row_len: int, scale: float | None,
           ranges: list[tuple[int, int]] | None = None, run_range: RangeRunner | None = None) -> tuple[Tensor, Tensor]:
    """Direct attention of every query over its runs of keys.

    Args: q, k, v ``[B, S, H, D]`` fp32; runs ``[S, R]`` int32 and run_len from `key_runs`; row_len: the grid's
        last axis (no run crosses a row of it).
        ranges: query ranges ``[(q0, q1), ...]`` covering ``[0, S)``, handed to ``run_range(fn, ranges)``, which
        calls ``fn(q0, q1)`` for each (on worker threads); default: one call over all queries, on the caller's
        intra-op threads.
    Returns: ``(out [B, S, H, D], lse [B, S, H] fp32)``.
    """
    ops = library()
    if ops is None:
        raise RuntimeError("the CPU direct kernel is not available (see the warning when it was built)")
    q, k, v = (t.contiguous() for t in (q, k, v))
    b, s, h, d = q.shape
    scale = d**-0.5 if scale is None else scale
    kt = ops.transpose_keys(k, row_len)  # [B, H, S / row_len, D, row_len + the kernel's PAD]
    out = torch.empty_like(q)
    lse = torch.empty(b, s, h, dtype=torch.float32)

    def one(q0: int, q1: int) -> None:
        ops.attend(q, kt, v, runs, run_len, scale, q0, q1, out, lse)

    if ranges is None or run_range is None:
        one(0, s)
    else:
        run_range(one, ranges)
    return out, lse
