"""The method contract: every registered method (`list_methods()`) passes these, with no per-method code here.

What a method supplies for it (`AttentionMethod`): ``example_knobs`` (a config that runs sparse on
every tiny family), ``oracle`` (its exact slow definition, `diffattn.methods.naive`), ``dense_limit``
(a config under which it is exactly dense attention, if it has one) and ``invalid_knobs`` (knobs
its config rejects, with the error). A method registered later inherits the whole suite.

  - on every tiny family: a failed apply changes nothing; apply -> run -> remove is bit-exact, and
    the patched run really uses the method (sparse calls, no fallback, another output);
  - on 1-, 2- and 3-D grids with and without padded text keys: ``attend`` equals the oracle, and
    equals dense attention at the dense limit;
  - bad knobs are rejected with an error naming them.
"""

from __future__ import annotations

import math

import pytest
import torch

import diffattn
from diffattn.kernels import reference_attention
from diffattn.methods import AttendCall, get_method, list_methods
from diffattn.models import find_adapter
from diffattn.tiny import tiny_output

from ..helpers import attention_state, denoiser, fail_set_processor, processors, random_qkv, random_text, same_objects

METHODS = list_methods()
GRIDS = [(13,), (7, 9), (3, 5, 6)]
# layer and timestep vary the per-call draws (shifts, sampled proxies); odd layer indices shift proxy windows
CALLS = [("blocks.0.attn1", 0, 999.0), ("blocks.3.attn1", 1, 250.0)]
TOL = dict(atol=2e-5, rtol=2e-5)


def _grid_id(grid: tuple[int, ...]) -> str:
    return "x".join(map(str, grid))


def _make(name: str, config=None, **knobs):
    cls = get_method(name)
    return cls(cls.make_config(config, **knobs))


def _calls(grid: tuple[int, ...], text: int):
    tk, tv, tm = random_text(text, seed=len(grid)) if text else (None, None, None)
    for layer, index, timestep in CALLS:
        yield AttendCall(grid=grid, extra_k=tk, extra_v=tv, extra_mask=tm, layer=layer, layer_index=index,
                         timestep=timestep, scale=0.3)  # fmt: skip


# --------------------------------------------------------------------------- every tiny family


@pytest.mark.parametrize("method", METHODS)
def test_failed_apply_then_apply_run_remove_is_bit_exact(tiny, method, monkeypatch):
    name, pipe, base = tiny
    knobs = get_method(method).example_knobs
    before, procs = attention_state(pipe), processors(pipe)
    cls = get_method(method)
    if cls(cls.make_config(**knobs)).supports(find_adapter(denoiser(pipe))) is not None:
        # a family the method refuses (e.g. freeswim on joint attention): a clear error, nothing changed
        with pytest.raises(ValueError, match=rf"method '{method}' does not support"):
            diffattn.apply_attention(pipe, method, preset=False, **knobs)
        assert same_objects(processors(pipe), procs) and attention_state(pipe) == before
        return

    # the modules the method patches (apply and remove without running)
    targets = diffattn.apply_attention(pipe, method, preset=False, **knobs)
    targets.remove()
    assert attention_state(pipe) == before
    prefix = "unet." if hasattr(pipe, "unet") else "transformer."
    modules = dict(denoiser(pipe).named_modules())
    victim = modules[targets.modules[len(targets.modules) // 2][len(prefix) :]]

    # atomic: a failure half-way through installing leaves everything as it was
    fail_set_processor(monkeypatch, victim)
    with pytest.raises(RuntimeError, match="injected failure"):
        diffattn.apply_attention(pipe, method, preset=False, **knobs)
    monkeypatch.undo()
    assert attention_state(pipe) == before

    with diffattn.attention(pipe, method, preset=False, **knobs) as handle:
        out = tiny_output(pipe, name)
    stats = handle.stats()
    assert stats and handle.modules == targets.modules
    if get_method(method).passthrough:  # the model's own attention call: bit-identical
        assert all(s.dense > 0 and s.sparse == 0 and s.fallback == 0 for s in stats.values()), stats
        assert torch.equal(out, base)
    else:
        # self-attention runs the method; targeted cross-attention runs or is answered from the method's state
        assert all(
            (s.sparse > 0 or s.cross + s.cross_cached > 0) and s.fallback == 0 and s.dense == 0 for s in stats.values()
        ), stats
        assert torch.isfinite(out).all()
        assert not torch.allclose(out, base, atol=1e-4)
    assert same_objects(processors(pipe), procs) and attention_state(pipe) == before
    assert torch.equal(tiny_output(pipe, name), base)


# --------------------------------------------------------------------------- attention of one call


@pytest.mark.parametrize("text", [0, 5], ids=["no-text", "text5"])
@pytest.mark.parametrize("grid", GRIDS, ids=_grid_id)
@pytest.mark.parametrize("method", METHODS)
def test_equals_its_oracle(method, grid, text):
    impl = _make(method, **get_method(method).example_knobs)
    q, k, v = random_qkv(math.prod(grid), seed=len(grid))
    for call in _calls(grid, text):
        out = impl.attend(q, k, v, call)
        assert out.shape == q.shape and out.dtype == q.dtype
        torch.testing.assert_close(out.double(), impl.oracle(q, k, v, call).double(), **TOL)


@pytest.mark.parametrize("text", [0, 5], ids=["no-text", "text5"])
@pytest.mark.parametrize("grid", GRIDS, ids=_grid_id)
@pytest.mark.parametrize("method", [m for m in METHODS if get_method(m).dense_limit(GRIDS[0]) is not None])
def test_dense_at_its_dense_limit(method, grid, text):
    impl = _make(method, get_method(method).dense_limit(grid))
    q, k, v = random_qkv(math.prod(grid), seed=len(grid) + 10)
    for call in _calls(grid, text):
        want, _ = reference_attention(
            q, k, v, extra_k=call.extra_k, extra_v=call.extra_v, extra_mask=call.extra_mask, scale=call.scale
        )
        torch.testing.assert_close(impl.attend(q, k, v, call), want, **TOL)
        torch.testing.assert_close(impl.oracle(q, k, v, call).double(), want.double(), **TOL)


# --------------------------------------------------------------------------- knobs

# a misspelt knob, which every method rejects, plus each method's own examples
BAD_KNOBS = [
    pytest.param(method, knobs, error, match, id=f"{method}-{'-'.join(f'{k}={v}' for k, v in knobs.items())}")
    for method in METHODS
    for knobs, error, match in (
        ({"no_such_knob": 1}, TypeError, r"unknown knob\(s\) \['no_such_knob'\] for method"),
        *get_method(method).invalid_knobs,
    )
]


@pytest.mark.parametrize("method,knobs,error,match", BAD_KNOBS)
def test_bad_knobs_are_rejected(method, knobs, error, match):
    with pytest.raises(error, match=match):
        get_method(method).make_config(**knobs)
