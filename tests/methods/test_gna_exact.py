"""GNA equals NATTEN 0.21 (non-causal) and the exact reference, on odd sizes, strides and dilations."""

from __future__ import annotations

import math

import pytest
import torch

from diffattn.functional import gna
from diffattn.kernels import reference_attention
from diffattn.methods.gna import GNAConfig, gna_plan
from diffattn.methods.naive import gna_mask

from ..helpers import random_qkv
from .gna_cases import GNA_CASES, case_id

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _qkv(grid: tuple[int, ...], dtype: torch.dtype = torch.float32):
    return random_qkv(math.prod(grid), dtype, seed=math.prod(grid), dim=16)


@pytest.mark.parametrize("case", GNA_CASES, ids=case_id)
def test_gna_matches_natten(case):
    natten = pytest.importorskip("natten", reason="natten (dev extra) is the ground truth for GNA semantics")
    grid, window, stride, dilation = case
    q, k, v = _qkv(grid)
    b, n, h, d = q.shape
    na = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(grid)]
    expected = na(
        *(t.reshape(b, *grid, h, d) for t in (q, k, v)), kernel_size=window, stride=stride, dilation=dilation
    ).reshape(b, n, h, d)
    out = gna(q, k, v, grid, window, stride, dilation, backend="cpu")
    torch.testing.assert_close(out, expected, atol=TOL[torch.float32], rtol=TOL[torch.float32])


@pytest.mark.parametrize("case", GNA_CASES, ids=case_id)
def test_plan_mask_equals_definition(case):
    """The tiling (what the kernels compute) covers exactly the GNA neighbourhoods."""
    grid, window, stride, dilation = case
    plan = gna_plan(grid, window, stride, dilation)
    assert torch.equal(plan.dense_mask(), gna_mask(grid, window, stride, dilation))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("text", [0, 5], ids=["no-text", "text5"])
@pytest.mark.parametrize("case", GNA_CASES[::4], ids=case_id)
def test_cpu_path_matches_reference(case, text, dtype):
    grid, window, stride, dilation = case
    q, k, v = _qkv(grid, dtype)
    extra = _qkv((text,), dtype) if text else [None, None, None]
    out = gna(q, k, v, grid, window, stride, dilation, extra_k=extra[0], extra_v=extra[1], backend="cpu")
    ref, _ = reference_attention(q, k, v, gna_mask(grid, window, stride, dilation), extra_k=extra[0], extra_v=extra[1])
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize(
    "grid,window", [((9, 13), (9, 13)), ((9, 13), (40, 40)), ((3, 5, 7), 100)], ids=["exact", "larger", "3d-int"]
)
def test_window_covering_grid_is_dense(grid, window):
    q, k, v = _qkv(grid)
    dense = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    torch.testing.assert_close(gna(q, k, v, grid, window, backend="cpu"), dense, atol=1e-5, rtol=1e-5)


def test_window_larger_than_axis_clamps_that_axis_only():
    cfg = GNAConfig(window=(4, 50), stride=(2, 8))
    assert cfg.resolve((10, 12)) == ((4, 12), (2, 1), (1, 1))


def test_reference_backend_matches_cpu():
    grid = (11, 7)
    q, k, v = _qkv(grid)
    a = gna(q, k, v, grid, (5, 3), (2, 1), (2, 1), backend="cpu")
    b = gna(q, k, v, grid, (5, 3), (2, 1), (2, 1), backend="reference")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_return_lse_matches_reference():
    grid = (6, 10)
    q, k, v = _qkv(grid)
    out, lse = gna(q, k, v, grid, (3, 4), (1, 2), return_lse=True, backend="cpu")
    ref, ref_lse = reference_attention(q, k, v, gna_mask(grid, (3, 4), (1, 2), (1, 1)))
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
