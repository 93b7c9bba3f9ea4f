"""The Triton block-sparse kernel against the exact reference; backend selection; the custom op's fake
(meta) path; a compile for real GPUs.

By default (conftest.py sets TRITON_INTERPRET=1) the kernel runs in the interpreter on CPU tensors. With
``TRITON_INTERPRET=0`` on a CUDA machine (scripts/gpu_check.sh) the same tests run it on the GPU."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed: the Triton kernel cannot be tested")

import diffattn.kernels as kernels  # noqa: E402
from diffattn.functional import gna  # noqa: E402
from diffattn.kernels import (  # noqa: E402
    attend_extra,
    backends,
    block_sparse_attention,
    choose_backend,
    reference_attention,
    triton_bsa,
    triton_plan,
)
from diffattn.methods.gna import GNAConfig, gna_plan  # noqa: E402
from diffattn.methods.naive import gna_mask  # noqa: E402

pytestmark = pytest.mark.skipif(
    not triton_bsa.INTERPRET and not torch.cuda.is_available(),
    reason="needs TRITON_INTERPRET=1 set before triton kernels load (tests/conftest.py) or a CUDA GPU",
)
#: where the kernel's tensors live: CPU under the interpreter, else the GPU
DEV = torch.device("cpu") if triton_bsa.INTERPRET else torch.device("cuda")

# out tolerances per dtype (lse is fp32 from the same inputs in every case)
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
LSE_TOL = 1e-4
# the backend object, unchecked: here the kernel runs on CPU tensors through the interpreter
TRITON = kernels.get_backend("triton")
DTYPE_ID = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclasses.dataclass(frozen=True)
class Case:
    grid: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...] | None = None
    dilation: tuple[int, ...] | None = None
    dtype: torch.dtype = torch.float32
    dim: int = 32
    text: int = 0  # extra dense keys every query attends
    text_mask: bool = False  # key-padding mask on them
    batch: int = 1
    heads: int = 2

    def resolved(self) -> tuple[tuple[int, ...], ...]:
        nd = len(self.grid)
        cfg = GNAConfig(window=self.window, stride=self.stride or (1,) * nd, dilation=self.dilation or (1,) * nd)
        return cfg.resolve(self.grid)

    @property
    def id(self) -> str:
        parts = [f"{len(self.grid)}d", "x".join(map(str, self.grid)), "w" + "x".join(map(str, self.window))]
        if self.stride:
            parts.append("s" + "x".join(map(str, self.stride)))
        if self.dilation:
            parts.append("d" + "x".join(map(str, self.dilation)))
        parts += [DTYPE_ID[self.dtype], f"hd{self.dim}"]
        if self.text:
            parts.append(f"text{self.text}" + ("-padmask" if self.text_mask else ""))
        return "-".join(parts)


def _slow(case: Case) -> pytest.param:
    return pytest.param(case, id=case.id, marks=pytest.mark.slow)


def _fast(case: Case) -> pytest.param:
    return pytest.param(case, id=case.id)


F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
CASES = [
    # 1-D: odd lengths, sliding / strided (partial and tile-aligned) / dilated / clamped-dense
    _fast(Case((37,), (7,))),
    _fast(Case((45,), (9,), (4,))),
    _fast(Case((48,), (16,), (16,))),
    _fast(Case((50,), (5,), None, (3,))),
    _fast(Case((61,), (6,), (3,), (2,), dim=16)),
    _fast(Case((20,), (32,), text=6)),
    _fast(Case((39,), (8,), (2,), dtype=BF16, text=5, text_mask=True, batch=2, heads=1)),
    # 2-D
    _fast(Case((15, 17), (5, 7))),
    _fast(Case((13, 19), (6, 8), (3, 4))),
    _fast(Case((16, 16), (8, 8), (8, 8))),
    _fast(Case((24, 24), (16, 16), (8, 8), dim=16, heads=1)),
    _fast(Case((14, 15), (3, 3), None, (2, 3))),
    _fast(Case((17, 18), (5, 4), (2, 3), (3, 2), dim=16)),
    _fast(Case((9, 21), (12, 5))),
    _fast(Case((15, 17), (5, 7), text=7)),
    _fast(Case((11, 13), (4, 6), (2, 2), text=9, text_mask=True, batch=2, heads=1)),
    _fast(Case((15, 17), (5, 7), dtype=BF16)),
    _fast(Case((12, 14), (7, 5), (3, 5), dtype=F16)),
    _fast(Case((10, 11), (5, 5), dim=40)),
    _fast(Case((9, 13), (4, 4), (2, 2), dtype=BF16, dim=80, text=4)),
    # 3-D (frames, rows, columns)
    _fast(Case((3, 6, 7), (2, 3, 5))),
    _fast(Case((4, 8, 9), (2, 4, 4), (1, 2, 3), dim=16)),
    _fast(Case((4, 8, 8), (2, 4, 4), (2, 4, 4), dim=16)),
    _fast(Case((5, 6, 8), (3, 3, 3), None, (1, 2, 2), dim=16)),
    _fast(Case((3, 7, 6), (2, 4, 3), (1, 2, 1), dtype=BF16, text=6, text_mask=True, batch=2, heads=1)),
    _fast(Case((2, 9, 10), (2, 5, 5), dtype=F16, dim=80, heads=1)),
    # up to 1024 tokens
    _slow(Case((32, 32), (9, 9), text=11, text_mask=True)),
    _slow(Case((31, 33), (16, 16), (8, 8), dtype=BF16)),
    _slow(Case((4, 16, 16), (2, 8, 8), (1, 4, 4), dtype=BF16, dim=64, text=8)),
    _slow(Case((1000,), (65,), (7,), (2,), heads=1)),
    _slow(Case((20, 24), (7, 9), (3, 4), dtype=F16, dim=160, heads=1)),
]
# generic plans (no GNA parameters): the kernel loads the per-axis masks instead
GENERIC_CASES = [
    _fast(Case((37,), (7,))),
    _fast(Case((61,), (6,), (3,), (2,), dim=16)),
    _fast(Case((15, 17), (5, 7), text=7)),
    _fast(Case((17, 18), (5, 4), (2, 3), (3, 2), dim=16)),
    _fast(Case((3, 6, 7), (2, 3, 5), dtype=BF16)),
    _fast(Case((5, 6, 8), (3, 3, 3), None, (1, 2, 2), dim=40)),
]


def _inputs(case: Case) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(math.prod(case.grid) + case.dim)
    n = math.prod(case.grid)

    def rand(length: int) -> torch.Tensor:
        return torch.randn(case.batch, length, case.heads, case.dim, generator=g).to(DEV, case.dtype)

    t: dict[str, torch.Tensor | None] = {"q": rand(n), "k": rand(n), "v": rand(n)}
    t["extra_k"], t["extra_v"], t["extra_mask"] = (rand(case.text), rand(case.text), None) if case.text else (None,) * 3
    if case.text and case.text_mask:
        valid = torch.rand(case.batch, case.text, generator=g) > 0.4
        valid[:, 0] = True  # and the last batch row keeps every text key
        valid[-1] = True
        t["extra_mask"] = valid.to(DEV)
    return t


def _check(case: Case, plan) -> None:
    t = _inputs(case)
    out, lse = triton_bsa.block_sparse_attention_triton(
        t["q"], t["k"], t["v"], plan, extra_k=t["extra_k"], extra_v=t["extra_v"], extra_mask=t["extra_mask"]
    )
    ref, ref_lse = reference_attention(
        t["q"],
        t["k"],
        t["v"],
        gna_mask(case.grid, *case.resolved()).to(DEV),
        extra_k=t["extra_k"],
        extra_v=t["extra_v"],
        extra_mask=t["extra_mask"],
    )
    assert out.dtype == case.dtype and out.shape == t["q"].shape
    assert lse.dtype == torch.float32 and lse.shape == t["q"].shape[:3]
    tol = TOL[case.dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=LSE_TOL, rtol=LSE_TOL)


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference(case: Case) -> None:
    """GNA plans: partial-tile masks computed in the kernel from (window, stride, dilation)."""
    plan = gna_plan(case.grid, *case.resolved())
    assert plan.gna is not None
    _check(case, plan)


@pytest.mark.parametrize("case", GENERIC_CASES)
def test_kernel_with_loaded_axis_masks(case: Case) -> None:
    """A plan without GNA parameters: the kernel gathers its small per-axis masks."""
    plan = dataclasses.replace(gna_plan(case.grid, *case.resolved()), gna=None)
    assert triton_bsa.KernelPlan.build(plan, torch.device("cpu")).mask_mode == triton_bsa.MASK_LOADED
    _check(case, plan)


def test_mask_modes_follow_the_plan() -> None:
    cpu = torch.device("cpu")
    blocked = gna_plan((16, 16), (8, 8), (8, 8), (1, 1))
    sliding = gna_plan((15, 17), (5, 7), (1, 1), (1, 1))
    assert triton_bsa.KernelPlan.build(blocked, cpu).mask_mode == triton_bsa.MASK_NONE
    kp = triton_bsa.KernelPlan.build(sliding, cpu)
    assert kp.mask_mode == triton_plan.MASK_GNA
    assert kp.gna == (1, 15, 17, 1, 5, 7, 1, 1, 1, 1, 1, 1)  # grid, window, stride, dilation; 3-D padded
    assert kp.q_index.dtype == torch.int32 and kp.tile_full.dtype == torch.int8
    assert triton_bsa.kernel_plan(sliding, cpu) is triton_bsa.kernel_plan(sliding, cpu)  # built once


@pytest.mark.parametrize("text_mask", [False, True], ids=["no-mask", "padmask"])
def test_dense_extra_attention(text_mask: bool) -> None:
    """Text keys only (what attend_extra runs on the triton backend), incl. a batch row whose every
    text key is padding: out 0 and lse -inf, like the reference."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 70, 2, 24, generator=g).to(DEV)
    ek, ev = torch.randn(2, 9, 2, 24, generator=g).to(DEV), torch.randn(2, 9, 2, 24, generator=g).to(DEV)
    mask = torch.tensor([[True, False] * 4 + [True], [False] * 9], device=DEV) if text_mask else None
    out, lse = attend_extra(q, ek, ev, mask, None, TRITON)
    ref, ref_lse = reference_attention(q, q[:, :0], q[:, :0], extra_k=ek, extra_v=ev, extra_mask=mask)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, ref_lse, atol=LSE_TOL, rtol=LSE_TOL)
    if text_mask:
        assert torch.all(out[1] == 0) and torch.all(lse[1] == float("-inf"))


def test_dense_attention_without_bias_runs_the_kernel() -> None:
    """What agent attention calls on the triton backend (agents x keys, queries x agents, and the
    dense fallback): the kernel with no sparse keys, never a materialized score matrix."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, n, 2, 16, generator=g).to(DEV) for n in (40, 23, 23))
    out, lse = kernels.dense_attention(q, k, v, scale=0.3, backend=TRITON)
    ref, ref_lse = reference_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, ref_lse, atol=LSE_TOL, rtol=LSE_TOL)


def test_strided_inputs_and_custom_scale() -> None:
    """q/k/v as diffusers hands them ([B, H, S, D] transposed to [B, S, H, D]) and a non-default scale."""
    grid, window = (9, 11), (4, 5)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, 99, 16, generator=g).to(DEV).transpose(1, 2) for _ in range(3))
    assert not q.is_contiguous()
    out, lse = triton_bsa.block_sparse_attention_triton(q, k, v, gna_plan(grid, window, (1, 1), (1, 1)), scale=0.3)
    ref, ref_lse = reference_attention(q, k, v, gna_mask(grid, window, (1, 1), (1, 1)).to(DEV), scale=0.3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, ref_lse, atol=LSE_TOL, rtol=LSE_TOL)


def test_dispatch_through_the_public_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """backend="triton" reaches the kernel from functional.gna with text keys folded into one pass
    (no merge); CPU tensors only pass the backend check because the check is stubbed here."""
    monkeypatch.setattr(backends.TritonBackend, "not_supported_reasons", lambda self, q: [])  # stubbed: interpreter
    monkeypatch.setattr(backends, "merge_attention", lambda parts: pytest.fail("triton must not merge partials"))
    grid, window, stride = (10, 12), (5, 4), (2, 1)
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 120, 2, 16, generator=g).to(DEV) for _ in range(3))
    ek, ev = torch.randn(1, 6, 2, 16, generator=g).to(DEV), torch.randn(1, 6, 2, 16, generator=g).to(DEV)
    out, lse = gna(q, k, v, grid, window, stride, extra_k=ek, extra_v=ev, backend="triton", return_lse=True)
    ref, ref_lse = reference_attention(q, k, v, gna_mask(grid, window, stride, (1, 1)).to(DEV), extra_k=ek, extra_v=ev)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, ref_lse, atol=LSE_TOL, rtol=LSE_TOL)
    plain = block_sparse_attention(q, k, v, gna_plan(grid, window, stride, (1, 1)), backend="triton")
    torch.testing.assert_close(plain, reference_attention(q, k, v, gna_mask(grid, window, stride, (1, 1)).to(DEV))[0])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"dim": 264}, ValueError, "head dims up to 256, got 264"),
        ({"dtype": torch.float64}, TypeError, "float16, bfloat16, float32; got torch.float64"),
        ({"tokens": 50}, ValueError, r"sequence length 50 does not match the plan's grid \(7, 7\) \(49\)"),
        ({"text_dim": 8}, ValueError, r"extra_k must be \[B=1, T, H=2, D=16\]"),
    ],
    ids=["head-dim-264", "float64", "wrong-length", "text-head-dim"],
)
def test_bad_inputs_name_the_problem(kwargs: dict, error: type, match: str) -> None:
    dim, dtype = kwargs.get("dim", 16), kwargs.get("dtype", torch.float32)
    q = torch.zeros(1, kwargs.get("tokens", 49), 2, dim, dtype=dtype)
    ek = torch.zeros(1, 3, 2, kwargs.get("text_dim", dim), dtype=dtype)
    plan = gna_plan((7, 7), (3, 3), (1, 1), (1, 1))
    with pytest.raises(error, match=match):
        triton_bsa.block_sparse_attention_triton(q, q, q, plan, extra_k=ek, extra_v=ek)


# ------------------------------------------------------------------------------------ backend choice


def _fake_cuda(dtype: torch.dtype = torch.float16, dim: int = 64) -> torch.Tensor:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return torch.empty(1, 4, 2, dim, device="cuda", dtype=dtype)


def test_auto_on_cpu_never_picks_triton_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="diffattn.kernels"):
        assert choose_backend(torch.empty(1, 4, 2, 16)).name == "cpu"
    assert "backend triton rejected: tensors are on cpu, triton needs CUDA tensors" in caplog.text


def test_explicit_triton_on_cpu_raises() -> None:
    with pytest.raises(ValueError, match=r"backend='triton' cannot run: tensors are on cpu, triton needs CUDA"):
        choose_backend(torch.empty(1, 4, 2, 16), "triton")
    with pytest.raises(ValueError, match=r"backend='triton' cannot run: tensors are on cpu"):
        gna(*(torch.zeros(1, 16, 1, 8) for _ in range(3)), (4, 4), 3, backend="triton")


def test_triton_not_importable_is_the_first_reason(monkeypatch, caplog) -> None:
    monkeypatch.setattr(backends, "triton_installed", lambda: False)
    with caplog.at_level(logging.INFO, logger="diffattn.kernels"):
        assert choose_backend(_fake_cuda()).name == "reference"  # cpu rejects CUDA tensors too
    assert "backend triton rejected: triton is not importable (not installed)" in caplog.text


@pytest.mark.parametrize(
    "dtype,dim,capability,expected",
    [
        (torch.float16, 64, (8, 0), None),
        (torch.bfloat16, 256, (9, 0), None),
        (torch.float64, 64, (8, 0), "dtype torch.float64 is not one of float16, bfloat16, float32"),
        (torch.float16, 320, (8, 0), "head dim 320 exceeds 256"),
        (torch.bfloat16, 64, (7, 5), "bfloat16 needs compute capability >= 8.0, this GPU has 7.5"),
        (torch.float16, 64, (6, 1), "GPU compute capability 6.1 is below 7.0"),
    ],
    ids=["fp16-sm80", "bf16-hd256-sm90", "float64", "head-dim-320", "bf16-sm75", "sm61"],
)
def test_cuda_checks(monkeypatch, caplog, dtype, dim, capability, expected) -> None:
    """On (fake) CUDA tensors, auto picks triton when it can run, else logs the reason."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    q = _fake_cuda(dtype, dim)
    with caplog.at_level(logging.INFO, logger="diffattn.kernels"):
        chosen = choose_backend(q)
    if expected is None:
        assert chosen.name == "triton" and "backend auto -> triton" in caplog.text
    else:
        assert chosen.name == "reference" and f"backend triton rejected: {expected}" in caplog.text
        with pytest.raises(ValueError, match=f"backend='triton' cannot run: {expected}"):
            choose_backend(q, "triton")


# --------------------------------------------------------------------------- custom op, autotuning


def _op_args(plan, q, extra=None):
    kp = triton_bsa.kernel_plan(plan, q.device)
    ek, ev, em = extra or (None, None, None)
    return (q, q, q, *kp.op_args(), ek, ev, em, 0.25)


def test_custom_op_fake_shapes() -> None:
    """Under FakeTensorMode (as torch.compile traces) the op gives its output metadata without running."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    plan = gna_plan((6, 10), (3, 5), (1, 1), (1, 1))
    with FakeTensorMode(allow_non_fake_inputs=True):
        q = torch.empty(3, 60, 4, 40, dtype=torch.bfloat16)
        out, lse = torch.ops.diffattn.block_sparse_attention(*_op_args(plan, q))
    assert out.shape == (3, 60, 4, 40) and out.dtype == torch.bfloat16
    assert lse.shape == (3, 60, 4) and lse.dtype == torch.float32


def test_custom_op_opcheck() -> None:
    """Schema, fake tensor and AOT-dispatch checks of torch.library (runs the kernel a few times)."""
    g = torch.Generator().manual_seed(2)
    plan = gna_plan((5, 6), (3, 3), (1, 1), (1, 1))
    q = torch.randn(1, 30, 1, 16, generator=g).to(DEV)
    extra = (torch.randn(1, 3, 1, 16, generator=g).to(DEV), torch.randn(1, 3, 1, 16, generator=g).to(DEV), None)
    torch.library.opcheck(
        torch.ops.diffattn.block_sparse_attention.default,
        _op_args(plan, q, extra),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"),
    )


def test_torch_compile_traces_through_the_op() -> None:
    """fullgraph compile (aot_eager: no inductor build) of a function that calls the public entry."""
    plan = gna_plan((5, 7), (3, 3), (1, 1), (1, 1))
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 35, 1, 16, generator=g).to(DEV) for _ in range(3))

    def f(q, k, v):
        out, _ = triton_bsa.block_sparse_attention_triton(q, k, v, plan)
        return out * 2

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v))


def test_autotune_configs() -> None:
    """The interpreter uses exactly one config; kept_configs drops what cannot launch or spills
    (ptxas figures in triton_bsa) and gives fp32 its own small tiles."""
    if triton_bsa.INTERPRET:
        assert len(triton_bsa._CONFIGS) == 1
    full = triton_bsa._HALF_CONFIGS + triton_bsa._FP32_CONFIGS
    assert not any(c.kwargs["BLOCK_N"] == 128 and c.num_stages >= 4 for c in triton_bsa._HALF_CONFIGS)

    def kept(**kw):
        args = dict(fp32=False, block_d=128, partial=False, tq=256, capability=(9, 0)) | kw
        out = triton_bsa.kept_configs(full, **args)
        assert out, f"no config kept for {args}"
        return out

    for cap in ((8, 0), (9, 0)):
        d128 = kept(capability=cap)
        assert not any(c.kwargs["BLOCK_M"] == 128 and c.num_warps == 4 for c in d128)
        assert all(c.num_warps == 4 for c in d128 if c.kwargs["BLOCK_M"] == 64)
        assert all(c in triton_bsa._HALF_CONFIGS for c in d128)
        limit = triton_bsa.SMEM_LIMIT[cap]
        assert all(triton_bsa.smem_estimate(c, 128, 2) <= limit for c in d128)
    assert any(c.kwargs["BLOCK_M"] == 128 and c.num_warps == 4 for c in kept(block_d=64))
    assert not any(c.kwargs["BLOCK_N"] == 128 for c in kept(partial=True))
    assert all(c.kwargs["BLOCK_M"] == 64 for c in kept(tq=36))
    assert all(c.kwargs["BLOCK_N"] <= 64 and c.num_stages <= 2 for c in kept(block_d=256))
    assert all(c.num_stages >= 3 for c in kept()) and all(c.num_stages >= 3 for c in kept(capability=(8, 0)))
    assert all(384 % c.kwargs["BLOCK_N"] == 0 for c in kept(kv_block=384))
    fp32 = kept(fp32=True)
    assert fp32 and all(c in triton_bsa._FP32_CONFIGS for c in fp32)
    assert all(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 32 for c in fp32)


@pytest.mark.parametrize(
    "grid,window,stride,dilation",
    [
        ((37,), (7,), (1,), (1,)),
        ((61,), (6,), (3,), (2,)),
        ((13, 19), (6, 8), (3, 4), (1, 1)),
        ((17, 18), (5, 4), (2, 3), (3, 2)),
        ((5, 6, 8), (3, 3, 3), (1, 1, 1), (1, 2, 2)),
        ((3, 7, 6), (2, 4, 3), (1, 2, 1), (1, 1, 1)),
        ((16, 16), (8, 8), (8, 8), (1, 1)),
    ],
    ids=["1d-sliding", "1d-strided-dilated", "2d-odd-strided", "2d-dilated", "3d-dilated", "3d-strided", "2d-blocked"],
)
def test_computed_key_indices_equal_the_plan(grid, window, stride, dilation) -> None:
    """The kernel's arithmetic key index (per axis start + dilation * r, from kv_box) gives exactly
    plan.kv_index, padding included; full tiles come first and num_full counts them."""
    plan = dataclasses.replace(gna_plan(grid, window, stride, dilation), kv_block=None)  # grid order
    kp = triton_bsa.KernelPlan.build(plan, torch.device("cpu"))
    assert kp.kv_block == 0 and kp.kv_box.shape == (plan.num_tiles, 6) and kp.kv_box.dtype == torch.int32
    g, steps = kp.geometry[:3], kp.geometry[3:]
    ra = kp.axis_shape[3:]
    slot = torch.arange(plan.kv_index.shape[1])
    r = (slot // (ra[1] * ra[2]), (slot // ra[2]) % ra[1], slot % ra[2])
    box = kp.kv_box.long()
    ok = torch.ones(plan.num_tiles, len(slot), dtype=torch.bool)
    pos = []
    for a in range(3):
        ok &= r[a][None, :] < box[:, 3 + a, None]
        pos.append(box[:, a, None] + steps[a] * r[a][None, :])
    kidx = torch.where(ok, (pos[0] * g[1] + pos[1]) * g[2] + pos[2], plan.num_tokens)
    torch.testing.assert_close(kidx, plan.kv_index, rtol=0, atol=0)
    full = [(s, e) for s, e, f in plan.groups if f]
    assert kp.num_full == (sum(e - s for s, e in full) if plan.has_mask else plan.num_tiles)
    assert torch.all(kp.tile_full[: kp.num_full] == 1) and torch.all(kp.tile_full[kp.num_full :] == 0)


@pytest.mark.parametrize(
    "case",
    [
        _fast(Case((15, 17), (5, 7), text=7)),
        _fast(Case((13, 19), (6, 8), (3, 4), dtype=BF16)),
        _fast(Case((61,), (6,), (3,), (2,), dim=16, text=5, text_mask=True, batch=2, heads=1)),
        _fast(Case((3, 7, 6), (2, 4, 3), (1, 2, 1), dtype=BF16, text=6)),
        _fast(Case((16, 16), (8, 8), (8, 8), text=3)),
    ],
)
@pytest.mark.parametrize("index_mode", ["computed", "loaded"])
def test_computed_and_loaded_key_indices_agree(case: Case, index_mode: str) -> None:
    """The same GNA plan with computed key indices (kv_box) and with gathered ones (kv_index):
    both exact, over full and partial launches, text keys and padding masks, fp32 and bf16."""
    plan = dataclasses.replace(gna_plan(case.grid, *case.resolved()), kv_block=None)  # grid order
    kp = triton_bsa.kernel_plan(plan, DEV)
    if index_mode == "loaded":
        kp = dataclasses.replace(kp, kv_box=kp.kv_box[:0])
    assert (kp.kv_box.numel() > 0) == (index_mode == "computed")
    t = _inputs(case)
    out, lse = torch.ops.diffattn.block_sparse_attention(
        t["q"], t["k"], t["v"], *kp.op_args(), t["extra_k"], t["extra_v"], t["extra_mask"], case.dim**-0.5
    )
    ref, ref_lse = reference_attention(
        t["q"], t["k"], t["v"], gna_mask(case.grid, *case.resolved()).to(DEV),
        extra_k=t["extra_k"], extra_v=t["extra_v"], extra_mask=t["extra_mask"],
    )  # fmt: skip
    tol = TOL[case.dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=LSE_TOL, rtol=LSE_TOL)


BLOCK_MAJOR = [
    pytest.param(Case((32, 32), (16, 16), (16, 16), text=6), id="2d-32x32-w16-s16-fp32-text"),
    pytest.param(Case((3, 16, 24), (2, 8, 8), (1, 8, 8), dtype=BF16, text=5, text_mask=True, batch=2, heads=1),
                 id="3d-3x16x24-w2x8x8-s1x8x8-bf16-text-padmask"),
    pytest.param(Case((5, 16, 16), (2, 8, 8), (2, 8, 8), dim=24), id="3d-5x16x16-ragged-frames-hd24"),
]


def _block_major_plan(case: Case):
    plan = gna_plan(case.grid, *case.resolved())
    kp = triton_bsa.kernel_plan(plan, DEV)
    assert plan.kv_block is not None and kp.kv_block == math.prod(plan.kv_block) and kp.kv_block % 64 == 0
    return plan, kp


@pytest.mark.parametrize("case", BLOCK_MAJOR)
def test_block_major_keys_equal_the_plan(case: Case) -> None:
    """Block-major order: the kernel's key rows (whole blocks of kv_block tokens from a box in block
    units) are, through the permutation, exactly the plan's keys; queries map back to themselves."""
    plan, kp = _block_major_plan(case)
    perm, inv = (t.cpu() for t in kp.perm)
    n = plan.num_tokens
    assert torch.equal(perm[inv], torch.arange(n)) and torch.equal(torch.sort(perm).values, torch.arange(n))
    nb, ra = kp.geometry[:3], kp.axis_shape[3:]
    slot = torch.arange(plan.kv_index.shape[1])
    blk, w = slot // kp.kv_block, slot % kp.kv_block
    r = (blk // (ra[1] * ra[2]), (blk // ra[2]) % ra[1], blk % ra[2])
    box = kp.kv_box.cpu().long()
    ok = torch.ones(plan.num_tiles, len(slot), dtype=torch.bool)
    for a in range(3):
        ok &= r[a][None, :] < box[:, 3 + a, None]
    c = [box[:, a, None] + r[a][None, :] for a in range(3)]
    rows = ((c[0] * nb[1] + c[1]) * nb[2] + c[2]) * kp.kv_block + w[None, :]
    keys = torch.where(ok, perm[rows.clamp(max=n - 1)], n)
    torch.testing.assert_close(keys, plan.kv_index, rtol=0, atol=0)
    q_rows = kp.q_index.cpu().long()
    torch.testing.assert_close(torch.where(q_rows < n, perm[q_rows.clamp(max=n - 1)], n), plan.q_index, rtol=0, atol=0)


@pytest.mark.parametrize("case", BLOCK_MAJOR)
def test_block_major_kernel_matches_reference(case: Case) -> None:
    """The permuted-layout kernel path (q, k, v gathered block-major, outputs gathered back) is exact,
    with text keys, padding masks, ragged query tiles, fp32 and bf16."""
    plan, kp = _block_major_plan(case)
    _check(case, plan)


def test_block_major_generic_plan() -> None:
    """A fully block-sparse plan without GNA parameters also runs block-major (key box from kv_pos)."""
    case = Case((5, 16, 16), (2, 8, 8), (2, 8, 8), dim=16, text=3)
    plan = dataclasses.replace(gna_plan(case.grid, *case.resolved()), gna=None)
    kp = triton_bsa.KernelPlan.build(plan, DEV)
    assert kp.kv_block == 64 and kp.num_full == plan.num_tiles
    _check(case, plan)


def test_block_major_tma_path_in_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TMA branch (tensor descriptors, one box per BLOCK_N keys) as the interpreter runs it: on a
    GPU it is chosen for sm90+ only, so this is its one exactness check without a Hopper machine."""
    if not triton_bsa.INTERPRET:
        pytest.skip("on a GPU the TMA choice follows the device; the GPU tests cover it there")
    monkeypatch.setattr(triton_bsa, "_can_use_tma", lambda k, v: True)
    case = Case((3, 16, 24), (2, 8, 8), (1, 8, 8), dtype=BF16, text=5, text_mask=True, batch=2, heads=1)
    plan, _ = _block_major_plan(case)
    _check(case, plan)


def test_generic_plans_gather_key_indices() -> None:
    plan = dataclasses.replace(gna_plan((15, 17), (5, 7), (1, 1), (1, 1)), gna=None)
    kp = triton_bsa.KernelPlan.build(plan, torch.device("cpu"))
    assert kp.kv_box.numel() == 0 and kp.mask_mode == triton_bsa.MASK_LOADED
    assert kp.tile_axes.shape == (plan.num_tiles, 3)


# ------------------------------------------------------------------------------------- real GPUs

REPO = Path(__file__).resolve().parents[2]
_COMPILE_SCRIPT = r"""
import triton
from diffattn.report.bench.compile_report import compile_one

# (sm, dtype, mask mode, index mode, head dim, BLOCK_M, BLOCK_N, warps, stages)
VARIANTS = [(80, "fp16", 1, 1, 64, 64, 64, 4, 2), (90, "bf16", 2, 0, 40, 128, 32, 8, 3),
            (80, "fp32", 0, 1, 48, 64, 32, 8, 2)]
for arch, dtype, mode, index_mode, dim, bm, bn, warps, stages in VARIANTS:
    cfg = triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)
    r = compile_one(arch, dtype, dim, mode, index_mode, cfg)
    print(f"sm{arch} {dtype} mask_mode={mode} index_mode={index_mode} shared={r['shared_bytes']}")
"""


def _gpu_compile_env() -> dict[str, str]:
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip(f"triton's bundled ptxas is missing ({ptxas}): cannot compile for CUDA here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_kernel_compiles_for_real_gpus() -> None:
    """The interpreter skips GPU-only rules (constexpr globals, dot shapes, types across branches):
    compile the kernel to CUBIN for sm80 and sm90 with triton's bundled ptxas, in a process without
    TRITON_INTERPRET, in the modes the report does not cover (loaded masks and indices, fp32). Needs no GPU."""
    run = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=_gpu_compile_env(), capture_output=True,
                         text=True, timeout=900, cwd=REPO)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sm80 fp16 mask_mode=1 index_mode=1" in run.stdout and "sm90 bf16 mask_mode=2 index_mode=0" in run.stdout
    assert "sm80 fp32 mask_mode=0 index_mode=1" in run.stdout


@pytest.mark.slow
def test_compile_report_must_haves(tmp_path: Path) -> None:
    """scripts/triton_report.py --quick (the first kept config of every launch of the FLUX-4K and
    HunyuanVideo presets, bf16, D=128, sm80 and sm90): no spills, shared memory within the GPU's limit,
    and a K/V ring of >= 3 buffers on sm90 and >= 2 on sm80 in the sparse-key loop."""
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "scripts/triton_report.py", "--quick", "--json", str(out)],
                         env=_gpu_compile_env(), capture_output=True, text=True, timeout=900, cwd=REPO)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())
    launches = {(r["arch"], r["launch"]) for r in rows}
    # sliding windows (stride 1): every tile is partial (clamped tiles have ragged key ranges);
    # tile-aligned strides: every tile is full and runs block-major
    assert launches == {(a, k) for a in (80, 90) for k in ("partial/computed", "full/block-major")}
    for r in rows:
        assert r["local_bytes"] == 0 and r["stack_bytes"] == 0, r
        assert r["shared_bytes"] <= r["shared_limit"], r
        assert r["kv_buffers"] >= (3 if r["arch"] == 90 else 2), r
        assert r["block_m"] == 128, r  # every preset's plan tile keeps a full 128-row query block
        assert r["tma"] == (r["arch"] == 90 and r["launch"] == "full/block-major"), r
