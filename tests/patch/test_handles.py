"""Which handle is installed where (issue 23 §4): apply and remove are serialized per pipeline, so two threads
never leave two patches installed; a pipeline whose denoiser was replaced after apply is still cleaned up by
`remove_attention` and by re-applying; a patched module that makes no attention call is reported once, at
the first call, and removing what another tool replaced names the modules in one line."""

from __future__ import annotations

import copy
import logging
import sys
import threading
import time

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

import diffattn
from diffattn.patch import _ACTIVE, records
from diffattn.tiny import build_tiny_pipeline, tiny_output

NAME = "tiny-sd"
NO_CALL = "made no attention call"
ROUNDS = 10


def _pipe():
    pipe = build_tiny_pipeline(NAME)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _state(pipe, unet=None) -> dict:
    """Everything a patch touches, by identity: processors, hooks and instance attributes of the denoiser, and
    the pipeline's instance attributes."""
    unet = pipe.unet if unet is None else unet
    return {
        "processors": [(n, id(m.processor)) for n, m in unet.named_modules() if hasattr(m, "set_processor")],
        "hooks": [
            list(getattr(unet, h)) for h in ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks")
        ],
        "unet_attrs": sorted(unet.__dict__),
        "pipe_attrs": sorted(k for k in pipe.__dict__ if k.startswith("__") or not k.startswith("_")),  # not a call's
        "active": unet in _ACTIVE,
    }


@pytest.fixture
def fast_switching(monkeypatch):
    """Threads switch every microsecond (the issue saw the race in 6-11 of 100 rounds at a tight interval),
    and each processor swap sleeps a little, which widens the window between an apply's look for the
    previous patch and its install enough to hit the race in most rounds. Both are restored afterwards."""
    swap = records.ProcessorSwap.apply

    def slow_swap(self) -> None:
        time.sleep(0.002)
        swap(self)

    monkeypatch.setattr(records.ProcessorSwap, "apply", slow_swap)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _race(*jobs) -> list[BaseException]:
    """Run the jobs in threads released together; the errors they raised."""
    barrier = threading.Barrier(len(jobs), timeout=60)
    errors: list[BaseException] = []

    def run(job) -> None:
        try:
            barrier.wait()
            job()
        except BaseException as e:  # surfaced by the caller
            errors.append(e)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_two_threads_applying_leave_one_patch(fast_switching):
    pipe = _pipe()
    before = _state(pipe)
    for _ in range(ROUNDS):
        handles: list = []
        jobs = [
            lambda m=m, out=handles: out.append(diffattn.apply_attention(pipe, m, preset=False))
            for m in ("msw", "dense")
        ]
        assert not _race(*jobs)
        assert sum(not h.removed for h in handles) == 1  # the later apply replaced the earlier patch
        assert diffattn.remove_attention(pipe) == 1
        assert _state(pipe) == before
        assert not any(h for h in handles if not h.removed)


def test_apply_racing_remove_leaves_a_consistent_pipeline(fast_switching):
    """One thread applies while another removes: either order is fine, but what is installed afterwards is
    exactly one whole patch or nothing, and removing it restores the pipeline."""
    pipe = _pipe()
    before = _state(pipe)
    for _ in range(ROUNDS):
        first = diffattn.apply_attention(pipe, "dense", preset=False)
        handles: list = [first]
        assert not _race(
            lambda out=handles: out.append(diffattn.apply_attention(pipe, "msw", preset=False)),
            lambda: diffattn.remove_attention(pipe),
        )
        alive = [h for h in handles if not h.removed]
        assert len(alive) <= 1 and first.removed
        wrapped = [m for m in pipe.unet.modules() if getattr(getattr(m, "processor", None), "diffattn_patch", None)]
        assert bool(wrapped) == bool(alive)
        diffattn.remove_attention(pipe)
        assert _state(pipe) == before


def _replace_unet(pipe) -> torch.nn.Module:
    """Another tool swaps the pipeline's denoiser after apply (a deep copy is the unpatched UNet)."""
    old = pipe.unet
    pipe.unet = copy.deepcopy(old)
    return old


def test_remove_attention_after_the_denoiser_was_replaced():
    pipe = _pipe()
    before = _state(pipe)
    handle = diffattn.apply_attention(pipe, "msw", preset=False)
    old = _replace_unet(pipe)
    new_state = _state(pipe)
    assert diffattn.remove_attention(pipe) == 1
    assert handle.removed
    assert _state(pipe, old) == before  # the old denoiser's hooks and processors are gone too
    # no check_inputs / encode_prompt wrapper left on the pipeline; its new denoiser was never patched
    assert _state(pipe) == {**new_state, "pipe_attrs": before["pipe_attrs"]}
    assert diffattn.remove_attention(pipe) == 0


def test_apply_replace_apply_remove_remove_cleans_up(pipelines):
    pipe = _pipe()
    before = _state(pipe)
    first = diffattn.apply_attention(pipe, "msw", preset=False)
    old = _replace_unet(pipe)
    fresh = _state(pipe)
    second = diffattn.apply_attention(pipe, "dense", preset=False)
    assert first.removed and not second.removed  # re-applying replaced the pipeline's previous patch
    assert diffattn.remove_attention(pipe) == 1
    assert diffattn.remove_attention(pipe) == 0
    assert _state(pipe, old) == before and _state(pipe) == {**fresh, "pipe_attrs": before["pipe_attrs"]}
    assert torch.equal(tiny_output(pipe, NAME), pipelines.output(NAME))  # same weights, nothing patched


def _other_tool(pipe) -> None:
    """What another plugin does after apply: its own processor on every attention module."""
    pipe.unet.set_attn_processor(AttnProcessor2_0())


def test_modules_without_attention_calls_are_reported_once(caplog):
    pipe = _pipe()
    with caplog.at_level(logging.WARNING, logger="diffattn"):
        handle = diffattn.apply_attention(pipe, "msw", preset=False)
        _other_tool(pipe)
        tiny_output(pipe, NAME)
        tiny_output(pipe, NAME, seed=1)
        warnings = [r.getMessage() for r in caplog.records if NO_CALL in r.getMessage()]
        assert len(warnings) == 1, warnings
        modules = handle.modules
        assert f"{len(modules)} of {len(modules)} patched module(s) {NO_CALL} in the first call of " in warnings[0]
        assert modules[0] in warnings[0] and "replaced after apply_attention" in warnings[0]
        assert not any(s.sparse + s.fallback + s.dense + s.cross + s.cached for s in handle.stats().values())
        caplog.clear()
        handle.remove()
    left = [r.getMessage() for r in caplog.records]
    assert len(left) == 1, left  # one line for all the modules the other tool replaced, no module repr
    assert "\n" not in left[0] and "Linear(" not in left[0] and "Attention(" not in left[0]
    assert f"{len(modules)} patched object(s) were replaced" in left[0] and f"processor of {modules[0]}" in left[0]
    assert not any(getattr(m.processor, "diffattn_patch", None) for m in pipe.unet.modules() if hasattr(m, "processor"))


def test_processor_that_never_calls_sdpa_is_reported(caplog):
    """The classic ``AttnProcessor`` computes attention with ``baddbmm``: nothing to intercept."""
    pipe = _pipe()
    pipe.unet.set_attn_processor(AttnProcessor())
    before = _state(pipe)
    with caplog.at_level(logging.WARNING, logger="diffattn"):
        with diffattn.attention(pipe, "msw", preset=False) as handle:
            tiny_output(pipe, NAME)
    assert handle.sparse_calls == 0
    assert sum(NO_CALL in r.getMessage() for r in caplog.records) == 1
    assert "replaced by someone else" not in caplog.text
    assert _state(pipe) == before


def test_every_module_called_gives_no_warning(sd, caplog):
    pipe, _ = sd
    with caplog.at_level(logging.WARNING, logger="diffattn"), diffattn.attention(pipe, "msw", preset=False) as h:
        tiny_output(pipe, NAME)
    assert h.sparse_calls > 0 and NO_CALL not in caplog.text
