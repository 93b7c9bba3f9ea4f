"""Atomic apply: a failure anywhere during patching leaves every module, processor, backend
setting and hook exactly as before, and the pipeline's output bit-identical."""

from __future__ import annotations

import pytest
import torch

import diffattn
from diffattn.tiny import tiny_output

from ..helpers import attention_state, denoiser, fail_set_processor

FAMILIES = ["tiny-sd", "tiny-flux", "tiny-wan"]  # attention_processor processors and dispatch ones
pytestmark = pytest.mark.parametrize("tiny", FAMILIES, indirect=True)


def _self_attention(pipe) -> list[torch.nn.Module]:
    handle = diffattn.apply_attention(pipe, "gna", window=3)
    names = set(handle.modules)
    handle.remove()
    prefix = "unet." if hasattr(pipe, "unet") else "transformer."
    return [m for n, m in denoiser(pipe).named_modules() if prefix + n in names]


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_failing_set_processor_rolls_back(tiny, position, monkeypatch):
    name, pipe, base = tiny
    targets = _self_attention(pipe)
    victim = targets[{"first": 0, "middle": len(targets) // 2, "last": -1}[position]]
    before = attention_state(pipe)
    fail_set_processor(monkeypatch, victim)
    with pytest.raises(RuntimeError, match="injected failure"):
        diffattn.apply_attention(pipe, "gna", window=3)
    monkeypatch.undo()
    assert attention_state(pipe) == before
    assert torch.equal(tiny_output(pipe, name), base)


def test_failing_hook_registration_rolls_back(tiny, monkeypatch):
    name, pipe, base = tiny
    before = attention_state(pipe)

    def failing(*args, **kwargs):
        raise RuntimeError("injected hook failure")

    monkeypatch.setattr(denoiser(pipe), "register_forward_pre_hook", failing)
    with pytest.raises(RuntimeError, match="injected hook failure"):
        diffattn.apply_attention(pipe, "gna", window=3)
    monkeypatch.undo()
    assert attention_state(pipe) == before
    assert torch.equal(tiny_output(pipe, name), base)


def test_failed_reapply_keeps_previous_patch_intact(tiny, monkeypatch):
    name, pipe, base = tiny
    first = diffattn.apply_attention(pipe, "gna", window=3)
    patched_state = attention_state(pipe)
    patched = tiny_output(pipe, name)
    victim = _self_attention_while_patched(pipe, first)
    fail_set_processor(
        monkeypatch, victim, when=lambda wrapper: wrapper.diffattn_patch.runtime.method is not first.method
    )
    with pytest.raises(RuntimeError, match="injected failure"):
        diffattn.apply_attention(pipe, "gna", window=5)
    monkeypatch.undo()
    assert not first.removed
    after = attention_state(pipe)
    # the previous patch is re-installed around the same originals (fresh wrappers and hook ids)
    stable = ("backends", "attrs", "active")
    assert {k: after[k] for k in stable} == {k: patched_state[k] for k in stable}
    assert torch.equal(tiny_output(pipe, name), patched)
    first.remove()
    assert torch.equal(tiny_output(pipe, name), base)


def _self_attention_while_patched(pipe, handle) -> torch.nn.Module:
    names = handle.modules
    prefix = "unet." if hasattr(pipe, "unet") else "transformer."
    modules = dict(denoiser(pipe).named_modules())
    return modules[names[len(names) // 2][len(prefix) :]]
