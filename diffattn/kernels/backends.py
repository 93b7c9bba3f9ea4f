"""Backends: *how* attention is computed, one object per kind, chosen once.

Each `Backend` says why it cannot run on tensors like ``q`` (`not_supported_reasons`, empty when it
can) and has three entry points, all on ``[B, S, H, D]`` tensors returning ``(out, lse [B, S, H] fp32)``:
  - `Backend.sparse`: attention over a `BlockPlan`, plus optional dense extra keys (text tokens);
  - `Backend.dense`: every query over every key, with an optional additive logit bias;
  - `Backend.extra`: every query over extra keys with a key-padding mask.
Kinds, in the order ``"auto"`` tries them: ``triton`` (block-sparse flash attention on CUDA,
`triton_bsa.py`, imported lazily so that diffattn imports and runs without triton), ``cpu`` (tile
gather + batched SDPA, or one masked SDPA on small grids, `cpu.py`) and ``reference`` (exact dense
masked fp32, `reference.py`, any device, small shapes only). `choose_backend` resolves a name once
(at patch time, or once per functional call) and logs why each rejected kind cannot run; the entry
points never re-check.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Sequence
from types import ModuleType
from typing import ClassVar

import torch
from torch import Tensor

from .cpu import block_sparse_attention_cpu, dense_attention_cpu, extra_attention_cpu, tiling_cost
from .merge import merge_attention
from .paths import note_path
from .plan import AxisTiling, BlockPlan
from .reference import reference_attention, reference_plan_attention

logger = logging.getLogger("diffattn.kernels")

#: ``(out [B, S, H, D], lse [B, S, H] fp32)``
OutLse = tuple[Tensor, Tensor]
#: extra keys every query attends: ``(extra_k [B, T, H, D], extra_v [B, T, H, D], extra_mask bool [B, T] or None)``
Extra = tuple[Tensor, Tensor, Tensor | None]


class Backend:
    """One way to compute attention. Instances are stateless singletons (`get_backend`)."""

    name: ClassVar[str]
    #: why it can run, logged when ``"auto"`` picks it
    runs_because: ClassVar[str]

    def not_supported_reasons(self, q: Tensor) -> list[str]:
        """Why this backend cannot run on tensors like ``q`` (device, dtype, head dim); empty if it can."""
        return []

    def sparse(
        self, q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, extra: Extra | None = None, scale: float | None = None
    ) -> OutLse:
        """Each query of ``q [B, S, H, D]`` over its plan keys and every ``extra`` key; ``S == plan.num_tokens``.
        Two partial attentions merged by log-sum-exp unless the backend fuses them."""
        parts = [self._plan_keys(q, k, v, plan, scale)]
        if extra is not None:
            parts.append(self.extra(q, *extra, scale=scale))
        return merge_attention(parts)

    def dense(
        self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, scale: float | None = None
    ) -> OutLse:
        """Every query of ``q [B, Sq, H, D]`` over every key of ``k/v [B, Sk, H, D]``; ``bias`` fp32
        broadcastable to ``[B, H, Sq, Sk]`` (``-inf`` drops a pair). For short key sets (proxies, agents):
        ``Sq x Sk``, never ``Sq x Sq``."""
        return reference_attention(q, k, v, bias=bias, scale=scale)

    def extra(
        self, q: Tensor, extra_k: Tensor, extra_v: Tensor, extra_mask: Tensor | None = None, scale: float | None = None
    ) -> OutLse:
        """Every query of ``q [B, S, H, D]`` over ``extra_k/v [B, T, H, D]``; ``extra_mask`` bool ``[B, T]``
        (True = valid). Never O(S^2) except on the reference backend."""
        return reference_attention(
            q, extra_k[:, :0], extra_v[:, :0], extra_k=extra_k, extra_v=extra_v, extra_mask=extra_mask, scale=scale
        )

    def _plan_keys(self, q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, scale: float | None) -> OutLse:
        raise NotImplementedError

    def tiling_cost(self, axes: Sequence[AxisTiling], item_bytes: int = 0) -> float | None:
        """Modelled cost of a plan of query tiles ``axes`` (one `AxisTiling` per axis) for calls whose q holds
        ``item_bytes`` per batch item (`batch_item_bytes`), which methods minimise to choose their query tile;
        None when the backend has no model (methods then keep their default tile)."""
        return None

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    def __str__(self) -> str:
        return self.name

    def __reduce__(self) -> tuple:
        return get_backend, (self.name,)  # unpickles to the same singleton


@functools.lru_cache(maxsize=1)
def _import_triton_bsa() -> tuple[ModuleType | None, str]:
    """The triton kernel module, or None and why it cannot be imported (tried once per process)."""
    try:
        return importlib.import_module(".triton_bsa", __package__), ""
    except ImportError as e:  # triton missing, or a triton too old for the kernel
        return None, f"{type(e).__name__}: {e}"


def triton_installed() -> bool:
    """Whether the ``triton`` package can be found (without importing it: that takes a second)."""
    return importlib.util.find_spec("triton") is not None


class TritonBackend(Backend):
    """Block-sparse flash attention on CUDA tensors; text keys folded into the same kernel pass."""

    name = "triton"
    runs_because = "CUDA tensors of a supported dtype and head dim"

    def not_supported_reasons(self, q: Tensor) -> list[str]:
        if not triton_installed():
            return ["triton is not importable (not installed); pip install triton (Linux x86_64/aarch64)"]
        if q.device.type != "cuda":
            return [f"tensors are on {q.device.type}, triton needs CUDA tensors"]
        module, why = _import_triton_bsa()  # only now: importing triton takes a second
        if module is None:
            return [f"triton is not importable ({why})"]
        reasons = []
        if q.dtype not in module.SUPPORTED_DTYPES:
            reasons.append(f"dtype {q.dtype} is not one of float16, bfloat16, float32")
        if q.dim() == 4 and q.shape[-1] > module.MAX_HEAD_DIM:
            reasons.append(f"head dim {q.shape[-1]} exceeds {module.MAX_HEAD_DIM}")
        if torch.version.hip is None:  # CUDA: triton needs Volta+, bf16 needs Ampere+
            major, minor = torch.cuda.get_device_capability(q.device)
            if major < 7:
                reasons.append(f"GPU compute capability {major}.{minor} is below 7.0, the minimum for triton")
            elif q.dtype == torch.bfloat16 and major < 8:
                reasons.append(f"bfloat16 needs compute capability >= 8.0, this GPU has {major}.{minor}")
        return reasons

    @staticmethod
    def _module() -> ModuleType:
        module, why = _import_triton_bsa()
        if module is None:
            raise RuntimeError(f"the triton backend was chosen but triton is not importable ({why})")
        return module

    def sparse(
        self, q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, extra: Extra | None = None, scale: float | None = None
    ) -> OutLse:
        ek, ev, em = extra if extra is not None else (None, None, None)
        return self._module().block_sparse_attention_triton(
            q, k, v, plan, extra_k=ek, extra_v=ev, extra_mask=em, scale=scale
        )

    def dense(
        self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, scale: float | None = None
    ) -> OutLse:
        if bias is None:  # the kernel with no sparse keys: no score matrix
            return self.extra(q, k, v, None, scale)
        return super().dense(q, k, v, bias, scale)  # exact Sq x Sk (short key sets only)

    def extra(
        self, q: Tensor, extra_k: Tensor, extra_v: Tensor, extra_mask: Tensor | None = None, scale: float | None = None
    ) -> OutLse:
        return self._module().dense_extra_attention_triton(q, extra_k, extra_v, extra_mask, scale)


class CpuBackend(Backend):
    """Tiles of gathered keys, one SDPA per chunk of tiles, or one masked SDPA on small grids (`cpu.py`),
    whichever its cost model finds cheaper per plan; on worker threads of one intra-op thread each."""

    name = "cpu"
    runs_because = "CPU tensors of a supported dtype"

    def not_supported_reasons(self, q: Tensor) -> list[str]:
        reasons = []
        if q.device.type != "cpu":
            reasons.append(f"tensors are on {q.device.type}, the cpu backend needs CPU tensors")
        if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            reasons.append(f"dtype {q.dtype} is not one of float32, bfloat16, float16")
        return reasons

    def _plan_keys(self, q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, scale: float | None) -> OutLse:
        return block_sparse_attention_cpu(q, k, v, plan, scale)

    def tiling_cost(self, axes: Sequence[AxisTiling], item_bytes: int = 0) -> float | None:
        return tiling_cost(axes, item_bytes)

    def dense(
        self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, scale: float | None = None
    ) -> OutLse:
        note_path("sdpa")
        return dense_attention_cpu(q, k, v, bias, scale)

    def extra(
        self, q: Tensor, extra_k: Tensor, extra_v: Tensor, extra_mask: Tensor | None = None, scale: float | None = None
    ) -> OutLse:
        return extra_attention_cpu(q, extra_k, extra_v, extra_mask, scale)


class ReferenceBackend(Backend):
    """Exact dense masked fp32 attention: any device, O(S^2) memory."""

    name = "reference"
    runs_because = "exact dense masked fp32 attention runs on any device (O(S^2) memory)"

    def _plan_keys(self, q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, scale: float | None) -> OutLse:
        return reference_plan_attention(q, k, v, plan, scale=scale)


#: every backend by name, in the order ``"auto"`` tries them
_BACKENDS: dict[str, Backend] = {b.name: b for b in (TritonBackend(), CpuBackend(), ReferenceBackend())}
BACKENDS = ("auto", *_BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend called ``name``, unchecked (`choose_backend` checks it against tensors)."""
    if name not in _BACKENDS:
        raise ValueError(f"backend={name!r} is not one of {BACKENDS}")
    return _BACKENDS[name]


def choose_backend(q: Tensor, backend: str | Backend = "auto") -> Backend:
    """Resolve ``backend`` for tensors like ``q`` (device, dtype and head dim matter), once.

    ``"auto"`` walks triton -> cpu -> reference and logs each rejection; a named backend that
    cannot run raises a ValueError saying why. A `Backend` object is already resolved and is returned as is.
    """
    if isinstance(backend, Backend):
        return backend
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    if backend != "auto":
        reasons = _BACKENDS[backend].not_supported_reasons(q)
        if reasons:
            raise ValueError(f"backend={backend!r} cannot run: {'; '.join(reasons)}")
        return _BACKENDS[backend]
    for candidate in _BACKENDS.values():
        reasons = candidate.not_supported_reasons(q)
        if not reasons:
            # the reference is exact but O(S^2) in memory: never pick it silently
            log = logger.warning if candidate.name == "reference" else logger.info
            log("backend auto -> %s (%s)", candidate.name, candidate.runs_because)
            return candidate
        logger.info("backend %s rejected: %s", candidate.name, "; ".join(reasons))
    raise AssertionError("the reference backend always runs")
