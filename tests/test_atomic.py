"""Atomic apply: a failure anywhere during patching leaves every module, processor, backend
setting and hook exactly as before, and the pipeline's output bit-identical."""

from __future__ import annotations

import pytest
import torch

import diffattn
from diffattn.patch import _ACTIVE
from diffattn.testing.tiny import build_tiny_pipeline, tiny_output

from .helpers import denoiser

FAMILIES = ["tiny-sd", "tiny-flux", "tiny-wan"]  # attention_processor processors and dispatch ones


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    pipe = build_tiny_pipeline(request.param)
    pipe.set_progress_bar_config(disable=True)
    return request.param, pipe, tiny_output(pipe, request.param)


def _snapshot(pipe) -> dict:
    """Everything patching may touch, by identity where identity matters."""
    den = denoiser(pipe)
    modules = [(n, m) for n, m in den.named_modules() if hasattr(m, "set_processor")]
    return {
        "processors": [(n, id(m.processor)) for n, m in modules],
        "backends": [(n, getattr(m.processor, "_attention_backend", "absent")) for n, m in modules],
        "pre_hooks": list(den._forward_pre_hooks),
        "kwarg_hooks": list(den._forward_pre_hooks_with_kwargs),
        "attrs": sorted(den.__dict__),
        "active": den in _ACTIVE,
    }


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
    before = _snapshot(pipe)
    original_set = type(victim).set_processor

    def failing(self, processor):
        if self is victim and getattr(processor, "diffattn_patch", None) is not None:
            raise RuntimeError("injected failure")
        return original_set(self, processor)

    monkeypatch.setattr(type(victim), "set_processor", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        diffattn.apply_attention(pipe, "gna", window=3)
    monkeypatch.undo()
    assert _snapshot(pipe) == before
    assert torch.equal(tiny_output(pipe, name), base)


def test_failing_hook_registration_rolls_back(tiny, monkeypatch):
    name, pipe, base = tiny
    before = _snapshot(pipe)

    def failing(*args, **kwargs):
        raise RuntimeError("injected hook failure")

    monkeypatch.setattr(denoiser(pipe), "register_forward_pre_hook", failing)
    with pytest.raises(RuntimeError, match="injected hook failure"):
        diffattn.apply_attention(pipe, "gna", window=3)
    monkeypatch.undo()
    assert _snapshot(pipe) == before
    assert torch.equal(tiny_output(pipe, name), base)


def test_failed_reapply_keeps_previous_patch_intact(tiny, monkeypatch):
    name, pipe, base = tiny
    first = diffattn.apply_attention(pipe, "gna", window=3)
    patched_state = _snapshot(pipe)
    patched = tiny_output(pipe, name)
    victim = _self_attention_while_patched(pipe, first)
    original_set = type(victim).set_processor

    def failing(self, processor):
        if self is victim and getattr(processor, "diffattn_patch", None) is not None:
            if processor.diffattn_patch.runtime.method is not first.method:
                raise RuntimeError("injected failure")
        return original_set(self, processor)

    monkeypatch.setattr(type(victim), "set_processor", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        diffattn.apply_attention(pipe, "gna", window=5)
    monkeypatch.undo()
    assert not first.removed
    after = _snapshot(pipe)
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
