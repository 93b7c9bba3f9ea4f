"""Kernel building blocks: LSE merge, plans, CPU chunking, extra-key masks, backend choice."""

from __future__ import annotations

import logging

import pytest
import torch

import diffattn.kernels.cpu as cpu
from diffattn.kernels import block_sparse_attention, choose_backend, merge_attention, reference_attention
from diffattn.methods.gna import gna_plan
from diffattn.methods.naive import gna_mask

from ..helpers import randn


@pytest.mark.parametrize("parts", [2, 3], ids=["two-parts", "three-parts"])
def test_merge_equals_attention_over_the_union(parts):
    q = randn(2, 7, 3, 8)
    ks = [randn(2, 5 + i, 3, 8, seed=i + 1) for i in range(parts)]
    vs = [randn(2, 5 + i, 3, 8, seed=i + 11) for i in range(parts)]
    partials = [reference_attention(q, k, v) for k, v in zip(ks, vs)]
    out, lse = merge_attention(partials)
    ref, ref_lse = reference_attention(q, torch.cat(ks, 1), torch.cat(vs, 1))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse, ref_lse, atol=1e-6, rtol=1e-6)


def test_merge_with_an_empty_partial_is_the_other_partial():
    q, k, v = randn(1, 4, 2, 8), randn(1, 6, 2, 8, seed=1), randn(1, 6, 2, 8, seed=2)
    full = reference_attention(q, k, v)
    empty = (torch.zeros_like(full[0]), torch.full_like(full[1], float("-inf")))
    out, _ = merge_attention([full, empty])
    torch.testing.assert_close(out, full[0])


def test_merge_needs_a_partial():
    with pytest.raises(ValueError, match="at least one"):
        merge_attention([])


@pytest.mark.parametrize(
    "grid,window,stride,full",
    [((16, 16), (8, 8), (8, 8), True), ((24, 24), (16, 16), (8, 8), True), ((15, 17), (5, 7), (1, 1), False)],
    ids=["blocked", "strided", "sliding-odd"],
)
def test_plan_structure(grid, window, stride, full):
    plan = gna_plan(grid, window, stride, (1, 1))
    assert plan.has_mask is not full
    # every query appears in exactly one tile
    q = plan.q_index[plan.q_index < plan.num_tokens]
    assert torch.equal(q.sort().values, torch.arange(plan.num_tokens))
    assert plan.density() >= gna_mask(grid, window, stride, (1, 1)).float().mean().item() - 1e-6


@pytest.mark.parametrize("batch", [1, 3], ids=["b1", "b3"])
def test_cpu_chunking_is_exact(monkeypatch, batch):
    """Force many small chunks; results must not depend on chunking."""
    grid, window, stride = (13, 11), (5, 4), (1, 2)
    plan = gna_plan(grid, window, stride, (1, 1))
    q, k, v = (randn(batch, 143, 2, 8, seed=s) for s in range(3))
    whole, whole_lse = cpu.block_sparse_attention_cpu(q, k, v, plan)
    monkeypatch.setattr(cpu, "CHUNK_BYTES", 1)
    chunked, chunked_lse = cpu.block_sparse_attention_cpu(q, k, v, plan)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(chunked_lse, whole_lse)
    ref, ref_lse = reference_attention(q, k, v, gna_mask(grid, window, stride, (1, 1)))
    torch.testing.assert_close(whole, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole_lse, ref_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_extra_keys_with_padding_mask(backend):
    grid = (6, 7)
    plan = gna_plan(grid, (3, 3), (1, 1), (1, 1))
    q, k, v = (randn(2, 42, 2, 8, seed=s) for s in range(3))
    ek, ev = randn(2, 5, 2, 8, seed=7), randn(2, 5, 2, 8, seed=8)
    valid = torch.tensor([[True, True, True, False, False], [True] * 5])
    out = block_sparse_attention(q, k, v, plan, extra_k=ek, extra_v=ev, extra_mask=valid, backend=backend)
    ref, _ = reference_attention(q, k, v, plan.dense_mask(), extra_k=ek, extra_v=ev, extra_mask=valid)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_auto_backend_logs_each_rejection(caplog):
    with caplog.at_level(logging.INFO, logger="diffattn.kernels"):
        assert choose_backend(torch.empty(0)).name == "cpu"
    assert "backend triton rejected: " in caplog.text  # CPU tensors, or triton not installed
    assert "backend auto -> cpu" in caplog.text


def test_explicit_backend_that_cannot_run_says_why():
    with pytest.raises(ValueError, match=r"backend='cpu' cannot run: dtype torch.float64"):
        choose_backend(torch.empty(0, dtype=torch.float64), "cpu")
    assert choose_backend(torch.empty(0, dtype=torch.float64)).name == "reference"
