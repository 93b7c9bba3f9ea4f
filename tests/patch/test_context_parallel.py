"""diffattn under diffusers' context parallelism (Ulysses), on 2 spawned CPU processes (gloo).

All spawned cases run in one pair of processes (`SpawnedCases`, started once per module); the
single-process references are computed here meanwhile. Cases alternate applying diffattn before
and after ``enable_parallelism``. The in-process tests at the end need no processes: they set
``_parallel_config`` by hand (a ``ContextParallelConfig`` needs no process group until ``setup``).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import ContextParallelConfig
from diffusers.models._modeling_parallel import ParallelConfig

from diffattn import apply_attention
from diffattn.testing.multiprocess import CPCase, SpawnedCases, forward_case, single_process, tiny_transformer

_GNA = {"wan": (("window", (3, 3, 3)),), "flux": (("window", (3, 3)),)}
_KNOBS = {"msw": (), "proxy": (("window", 2),), "agent": (("agents", 8),)}
_ODD = {"wan": (3, 5, 7), "flux": (7, 9)}  # 105 / 63 image tokens and 15 text tokens: uneven chunks

EQUAL = (
    # GNA in both orders; each also removes diffattn afterwards and records the processors' state
    [CPCase(f, "gna", _GNA[f], order=o, remove=True) for f in ("wan", "flux") for o in ("before", "after")]
    # uneven per-rank chunks (ulysses_anything): [txt_0 (8), img_0 (32), txt_1 (7), img_1 (31)]
    + [CPCase(f, "gna", _GNA[f], order=o, ulysses_anything=True, grid=_ODD[f], text_len=15)
       for f, o in (("wan", "before"), ("flux", "after"))]
    + [CPCase(f, m, _KNOBS[m], order=("before", "after")[(i + j) % 2])
       for i, f in enumerate(("wan", "flux")) for j, m in enumerate(_KNOBS)]
)
DENSE = CPCase("flux", None, order="after")  # the harness itself: diffusers' dense CP == one process
WAN_DENSE = CPCase("wan", None, order="after")  # computed in this process only
RING = [CPCase("wan", "gna", _GNA["wan"], order=o, ring=2) for o in ("before", "after")]
TEXT_WHOLE = CPCase("flux", "gna", _GNA["flux"], order="after", split_text=False)


@pytest.fixture(scope="module")
def spawned():
    """Rank 0's results of every spawned case, and the single-process references."""
    running = SpawnedCases([*EQUAL, DENSE, *RING, TEXT_WHOLE], world=2)
    try:
        references = {c.id: single_process(c) for c in [*EQUAL, DENSE, WAN_DENSE]}
    finally:
        results = running.result()  # waits for the ranks even if a reference failed
    return results, references


def _ok(results, case):
    result = results[case.id]
    assert result.error is None, f"{case.id} raised on rank 0:\n{result.error}"
    return result


@pytest.mark.slow
def test_dense_context_parallel_equals_one_process(spawned):
    results, references = spawned
    torch.testing.assert_close(_ok(results, DENSE).output, references[DENSE.id].output, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("case", EQUAL, ids=lambda c: c.id)
def test_ulysses_equals_one_process(spawned, case):
    """Sparse on every patched module, no fallback, and the single-process output within 1e-5."""
    results, references = spawned
    result, reference = _ok(results, case), references[case.id]
    assert result.modules == reference.modules > 0
    assert (result.sparse, result.fallback) == (result.modules, 0)
    torch.testing.assert_close(result.output, reference.output, atol=1e-5, rtol=0)
    if case.grid is None:  # the method does change the output, so the equality can fail
        dense = references[(DENSE if case.family == "flux" else WAN_DENSE).id].output
        assert (reference.output - dense).abs().max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in EQUAL if c.remove], ids=lambda c: c.id)
def test_remove_after_context_parallel_restores_processors(spawned, case):
    """Every processor is the original object again, with diffusers' ``_parallel_config`` on it:
    the state ``enable_parallelism`` alone leaves, whichever came first."""
    assert _ok(spawned[0], case).restored is True


@pytest.mark.slow
@pytest.mark.parametrize("case", RING, ids=lambda c: c.id)
def test_ring_is_refused(spawned, case):
    error = spawned[0][case.id].error
    assert error is not None and "ring_degree=2" in error and "Supported: Ulysses" in error
    # applied after enable: at apply time; before: at the first call, before any collective
    where = "apply_attention" if case.order == "after" else "in run"
    assert where in error, error


@pytest.mark.slow
def test_unrecoverable_order_falls_back_loudly(spawned):
    """A plan that keeps the text whole on each rank: the gathered length is 2 x text + image,
    which matches no layout, so every call is counted as a fallback, none as sparse."""
    result = _ok(spawned[0], TEXT_WHOLE)
    assert (result.sparse, result.fallback) == (0, result.modules)
    assert result.text_split is False


@pytest.mark.slow
def test_text_split_is_read_from_diffusers_hooks(spawned):
    """FLUX's own plan splits ``encoder_hidden_states`` per rank (so a joint call is de-interleaved);
    Wan's does not (its self-attention is image-only)."""
    flux, wan = (_ok(spawned[0], next(c for c in EQUAL if c.family == f)) for f in ("flux", "wan"))
    assert (flux.text_split, wan.text_split) == (True, False)


# --------------------------------------------------------------------------- in-process


def _ring_config() -> ParallelConfig:
    return ParallelConfig(context_parallel_config=ContextParallelConfig(ring_degree=2))


def _tiny_flux():
    return tiny_transformer("flux")


def _state(model):
    return [(n, m.processor, getattr(m.processor, "_parallel_config", None)) for n, m in model.named_modules()
            if hasattr(m, "set_processor")]


def test_parallel_config_reads_and_writes_through_the_wrapper():
    model = _tiny_flux()
    before = _state(model)
    original = model.transformer_blocks[0].attn.processor
    handle = apply_attention(model, "gna", window=3, preset=False)
    wrapper = model.transformer_blocks[0].attn.processor
    assert wrapper is not original and wrapper._parallel_config is None
    config = ParallelConfig()
    wrapper._parallel_config = config  # what enable_parallelism does
    assert original._parallel_config is config and wrapper._parallel_config is config
    handle.remove()
    assert [(n, p) for n, p, _ in _state(model)] == [(n, p) for n, p, _ in before]
    assert model.transformer_blocks[0].attn.processor._parallel_config is config


def test_ring_refused_at_apply_time_leaves_model_unchanged():
    model = _tiny_flux()
    for m in model.modules():
        if hasattr(m, "set_processor"):
            m.processor._parallel_config = _ring_config()
    before = _state(model)
    with pytest.raises(ValueError, match=r"ring_degree=2.*Supported: Ulysses"):
        apply_attention(model, "gna", window=3, preset=False)
    assert all(a[1] is b[1] and a[2] is b[2] for a, b in zip(_state(model), before))


def test_ring_refused_at_first_call_when_enabled_later():
    model = _tiny_flux()
    handle = apply_attention(model, "gna", window=3, preset=False)
    for m in model.modules():
        if hasattr(m, "set_processor"):
            m.processor._parallel_config = _ring_config()  # through the wrapper, as enable_parallelism does
    with pytest.raises(ValueError, match=r"ring_degree=2.*Supported: Ulysses"):
        forward_case(model, CPCase("flux"))
    assert handle.sparse_calls == 0
    handle.remove()
