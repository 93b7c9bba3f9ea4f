"""Every supported family, on its tiny offline pipeline: GNA's dense limit, real sparsity, re-apply and
context-manager undo. Apply/remove bit-exactness of every method is in test_method_contract.py."""

from __future__ import annotations

import pytest
import torch

import diffattn
from diffattn.tiny import tiny_output

# window large enough to cover every tiny grid (clamped per axis, so it is exactly dense)
HUGE = 10**6


def test_window_covering_grid_equals_unpatched(tiny):
    name, pipe, base = tiny
    with diffattn.attention(pipe, "gna", window=HUGE) as h:
        out = tiny_output(pipe, name)
    assert h.sparse_calls > 0 and h.fallback_calls == 0
    torch.testing.assert_close(out, base, atol=1e-4, rtol=1e-4)


# stride 1 (sliding) is the method contract's example (test_method_contract.py)
@pytest.mark.parametrize("stride", [2], ids=["strided"])
def test_small_window_changes_output_without_fallback(tiny, stride):
    name, pipe, base = tiny
    with diffattn.attention(pipe, "gna", window=3, stride=stride) as h:
        out = tiny_output(pipe, name)
    stats = h.stats()
    assert stats, "no module was patched"
    # every patched self-attention module ran sparse on every call; none fell back to dense
    assert all(s.sparse > 0 and s.fallback == 0 and s.dense == 0 for s in stats.values()), stats
    assert not torch.allclose(out, base, atol=1e-4)
    assert torch.isfinite(out).all()


def test_reapply_replaces_previous_patch(tiny):
    name, pipe, base = tiny
    first = diffattn.apply_attention(pipe, "gna", window=3)
    second = diffattn.apply_attention(pipe, "gna", window=HUGE)
    assert first.removed and not second.removed
    torch.testing.assert_close(tiny_output(pipe, name), base, atol=1e-4, rtol=1e-4)
    assert first.sparse_calls == 0 and second.sparse_calls > 0
    assert diffattn.remove_attention(pipe) == 1
    assert torch.equal(tiny_output(pipe, name), base)
    # no wrapper of the first patch is left behind: every processor is diffattn-free again
    modules = [m for c in pipe.components.values() if isinstance(c, torch.nn.Module) for m in c.modules()]
    assert not any(hasattr(getattr(m, "processor", None), "diffattn_patch") for m in modules)


def test_context_manager_restores_on_error(tiny):
    name, pipe, base = tiny
    with pytest.raises(RuntimeError, match="boom"):
        with diffattn.attention(pipe, "gna", window=3):
            raise RuntimeError("boom")
    assert torch.equal(tiny_output(pipe, name), base)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-flux", "tiny-wan"])
def test_steps_limit_where_the_method_runs(name, pipelines):
    """steps=(0, 1) of a 2-step schedule: first step sparse, second dense (Wan calls twice per step)."""
    pipe = pipelines.pipe(name)
    with diffattn.attention(pipe, "gna", window=3, steps=(0, 1)) as h:
        tiny_output(pipe, name)
    stats = list(h.stats().values())
    assert all(s.sparse > 0 and s.sparse == s.dense for s in stats), stats
