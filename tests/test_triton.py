"""The Triton block-sparse kernel under TRITON_INTERPRET=1 (set in conftest.py) on CPU tensors, against
the exact reference; backend selection; the custom op's fake (meta) path; a compile for real GPUs."""

from __future__ import annotations

import dataclasses
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
)
from diffattn.methods.gna import GNAConfig, gna_plan  # noqa: E402
from diffattn.methods.naive import gna_mask  # noqa: E402

pytestmark = pytest.mark.skipif(
    not triton_bsa.INTERPRET, reason="TRITON_INTERPRET=1 must be set before triton kernels load (tests/conftest.py)"
)

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
        return torch.randn(case.batch, length, case.heads, case.dim, generator=g).to(case.dtype)

    t: dict[str, torch.Tensor | None] = {"q": rand(n), "k": rand(n), "v": rand(n)}
    t["extra_k"], t["extra_v"], t["extra_mask"] = (rand(case.text), rand(case.text), None) if case.text else (None,) * 3
    if case.text and case.text_mask:
        valid = torch.rand(case.batch, case.text, generator=g) > 0.4
        valid[:, 0] = True  # and the last batch row keeps every text key
        valid[-1] = True
        t["extra_mask"] = valid
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
        gna_mask(case.grid, *case.resolved()),
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
    assert kp.mask_mode == triton_bsa.MASK_GNA
    assert kp.gna == (1, 15, 17, 1, 5, 7, 1, 1, 1, 1, 1, 1)  # grid, window, stride, dilation; 3-D padded
    assert kp.q_index.dtype == torch.int32 and kp.tile_full.dtype == torch.int8
    assert triton_bsa.kernel_plan(sliding, cpu) is triton_bsa.kernel_plan(sliding, cpu)  # built once


@pytest.mark.parametrize("text_mask", [False, True], ids=["no-mask", "padmask"])
def test_dense_extra_attention(text_mask: bool) -> None:
    """Text keys only (what attend_extra runs on the triton backend), incl. a batch row whose every
    text key is padding: out 0 and lse -inf, like the reference."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 70, 2, 24, generator=g)
    ek, ev = torch.randn(2, 9, 2, 24, generator=g), torch.randn(2, 9, 2, 24, generator=g)
    mask = torch.tensor([[True, False] * 4 + [True], [False] * 9]) if text_mask else None
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
    q, k, v = (torch.randn(1, n, 2, 16, generator=g) for n in (40, 23, 23))
    out, lse = kernels.dense_attention(q, k, v, scale=0.3, backend=TRITON)
    ref, ref_lse = reference_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, ref_lse, atol=LSE_TOL, rtol=LSE_TOL)


def test_strided_inputs_and_custom_scale() -> None:
    """q/k/v as diffusers hands them ([B, H, S, D] transposed to [B, S, H, D]) and a non-default scale."""
    grid, window = (9, 11), (4, 5)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, 99, 16, generator=g).transpose(1, 2) for _ in range(3))
    assert not q.is_contiguous()
    out, lse = triton_bsa.block_sparse_attention_triton(q, k, v, gna_plan(grid, window, (1, 1), (1, 1)), scale=0.3)
    ref, ref_lse = reference_attention(q, k, v, gna_mask(grid, window, (1, 1), (1, 1)), scale=0.3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, ref_lse, atol=LSE_TOL, rtol=LSE_TOL)


def test_dispatch_through_the_public_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """backend="triton" reaches the kernel from functional.gna with text keys folded into one pass
    (no merge); CPU tensors only pass the backend check because the check is stubbed here."""
    monkeypatch.setattr(backends.TritonBackend, "not_supported_reasons", lambda self, q: [])  # stubbed: interpreter
    monkeypatch.setattr(backends, "merge_attention", lambda parts: pytest.fail("triton must not merge partials"))
    grid, window, stride = (10, 12), (5, 4), (2, 1)
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 120, 2, 16, generator=g) for _ in range(3))
    ek, ev = torch.randn(1, 6, 2, 16, generator=g), torch.randn(1, 6, 2, 16, generator=g)
    out, lse = gna(q, k, v, grid, window, stride, extra_k=ek, extra_v=ev, backend="triton", return_lse=True)
    ref, ref_lse = reference_attention(q, k, v, gna_mask(grid, window, stride, (1, 1)), extra_k=ek, extra_v=ev)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, ref_lse, atol=LSE_TOL, rtol=LSE_TOL)
    plain = block_sparse_attention(q, k, v, gna_plan(grid, window, stride, (1, 1)), backend="triton")
    torch.testing.assert_close(plain, reference_attention(q, k, v, gna_mask(grid, window, stride, (1, 1)))[0])


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
    return (q, q, q, kp.q_index, kp.kv_index, kp.tile_full, kp.tile_axes, list(kp.masks), list(kp.axis_shape),
            list(kp.gna), kp.mask_mode, ek, ev, em, 0.25)  # fmt: skip


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
    q = torch.randn(1, 30, 1, 16, generator=g)
    extra = (torch.randn(1, 3, 1, 16, generator=g), torch.randn(1, 3, 1, 16, generator=g), None)
    torch.library.opcheck(
        torch.ops.diffattn.block_sparse_attention.default,
        _op_args(plan, q, extra),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"),
    )


def test_torch_compile_traces_through_the_op() -> None:
    """fullgraph compile (aot_eager: no inductor build) of a function that calls the public entry."""
    plan = gna_plan((5, 7), (3, 3), (1, 1), (1, 1))
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 35, 1, 16, generator=g) for _ in range(3))

    def f(q, k, v):
        out, _ = triton_bsa.block_sparse_attention_triton(q, k, v, plan)
        return out * 2

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v))


def test_autotune_configs() -> None:
    """keep() drops configs that cannot be fast; the interpreter uses exactly one; _prune bounds
    BLOCK_M by the plan tile and key blocks by the head dim."""
    full = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm in (64, 128)
        for bn in (64, 32, 128)
        for w in (4, 8)
        for s in (2, 3, 4)
    ]
    kept = [c for c in full if triton_bsa._keep(c)]
    assert kept and len(kept) < len(full)
    assert all(c.num_warps == 4 for c in kept if c.kwargs["BLOCK_M"] == 64)
    assert len(triton_bsa._CONFIGS) == 1  # interpreting
    small_tile = triton_bsa._prune(kept, {"TQ": 36}, BLOCK_D=64)
    assert small_tile and all(c.kwargs["BLOCK_M"] == 64 for c in small_tile)
    wide = triton_bsa._prune(kept, {"TQ": 256}, BLOCK_D=256)
    assert wide and all(c.kwargs["BLOCK_N"] <= 64 and c.num_stages <= 2 for c in wide)


# ------------------------------------------------------------------------------------- real GPUs

_COMPILE_SCRIPT = r"""
import sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from diffattn.kernels import triton_bsa as tb

fn = tb._bsa_fwd_kernel.fn
# (sm, dtype, mask mode, head dim, BLOCK_M, BLOCK_N, warps, stages)
VARIANTS = [(80, "fp16", 1, 64, 64, 64, 4, 2), (90, "bf16", 2, 40, 128, 32, 8, 3)]
for arch, dtype, mode, dim, bm, bn, warps, stages in VARIANTS:
    const = dict(HEAD_DIM=dim, BLOCK_D=max(16, triton.next_power_of_2(dim)), MASK_MODE=mode, HAS_EXTRA=True,
                 HAS_EXTRA_MASK=True, UPCAST=False, INPUT_PRECISION="ieee", BLOCK_M=bm, BLOCK_N=bn)
    ptr = {"EMASK": "*i8", "LSE": "*fp32", "Q_INDEX": "*i32", "KV_INDEX": "*i32", "TILE_FULL": "*i8",
           "TILE_AXES": "*i32", "M0": "*i8", "M1": "*i8", "M2": "*i8"}
    ptr.update({n: "*" + dtype for n in ("Q", "K", "V", "EK", "EV", "OUT")})
    sig = {n: "constexpr" if n in const else ptr.get(n, "fp32" if n == "qk_scale" else "i32") for n in fn.arg_names}
    # what a launch specializes: 16-byte aligned pointers, and [B, S, H, D] strides divisible by 16 when D is
    strides = ["s" + t + a for t in ("q", "k", "v", "ek", "ev", "o") for a in "bsh"]
    aligned = [n for n in fn.arg_names if n in ptr or (dim % 16 == 0 and n in strides)]
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    k = triton.compile(ASTSource(fn, sig, constexprs=const, attrs=attrs), target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": warps, "num_stages": stages})
    assert k.asm["cubin"], "no cubin"
    print(f"sm{arch} {dtype} mask_mode={mode} shared={k.metadata.shared}")
"""


@pytest.mark.slow
def test_kernel_compiles_for_real_gpus() -> None:
    """The interpreter skips GPU-only rules (constexpr globals, dot shapes, types across branches):
    compile the kernel to CUBIN for sm80 and sm90 with triton's bundled ptxas, in a process without
    TRITON_INTERPRET. Needs no GPU."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip(f"triton's bundled ptxas is missing ({ptxas}): cannot compile for CUDA here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sm80 fp16 mask_mode=1" in run.stdout and "sm90 bf16 mask_mode=2" in run.stdout
