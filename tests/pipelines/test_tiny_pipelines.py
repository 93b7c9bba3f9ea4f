"""Tests for the tiny offline pipelines in ``diffattn.tiny``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from diffattn.tiny import TINY_MODELS, build_tiny_pipeline, tiny_call_kwargs, tiny_output


def _expected_shape(name: str, **size: int) -> tuple[int, ...]:
    kw = tiny_call_kwargs(name, **size)
    if "num_frames" in kw:
        return (1, kw["num_frames"], 3, kw["height"], kw["width"])
    return (1, 3, kw["height"], kw["width"])


@pytest.mark.parametrize("name", TINY_MODELS, ids=TINY_MODELS)
def test_tiny_pipeline_runs_deterministically(name: str) -> None:
    pipe = build_tiny_pipeline(name)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            assert not component.training
            assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in component.parameters())
    first = tiny_output(pipe, name)
    second = tiny_output(pipe, name)
    assert first.dtype == torch.float32
    assert first.shape == _expected_shape(name)
    assert torch.isfinite(first).all()
    assert first.std() > 0
    assert torch.equal(first, second)


def test_tiny_call_kwargs_are_fresh_and_complete() -> None:
    a, b = tiny_call_kwargs("tiny-wan"), tiny_call_kwargs("tiny-wan")
    assert a["generator"] is not b["generator"]
    assert a["num_inference_steps"] == 2 and a["output_type"] == "pt" and a["num_frames"] == 9
    assert tiny_call_kwargs("tiny-hunyuanvideo")["prompt_template"] == {"template": "{}", "crop_start": 0}
    assert tiny_call_kwargs("tiny-pixart-sigma")["use_resolution_binning"] is False
    assert tiny_call_kwargs("tiny-sd", height=48, width=64)["height"] == 48
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny_call_kwargs("tiny-ltx", height=80)


def test_build_is_seeded_and_keeps_global_rng() -> None:
    state = torch.random.get_rng_state()
    a = build_tiny_pipeline("tiny-flux", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_tiny_pipeline("tiny-flux", seed=3)
    c = build_tiny_pipeline("tiny-flux", seed=4)
    out_a, out_b, out_c = (tiny_output(p, "tiny-flux") for p in (a, b, c))
    assert torch.equal(out_a, out_b)
    assert not torch.equal(out_a, out_c)
    assert not torch.equal(out_a, tiny_output(a, "tiny-flux", seed=1))


def test_size_override() -> None:
    pipe = build_tiny_pipeline("tiny-sd")
    out = tiny_output(pipe, "tiny-sd", height=48, width=32)
    assert out.shape == _expected_shape("tiny-sd", height=48, width=32) == (1, 3, 48, 32)


@pytest.mark.parametrize("fn", [build_tiny_pipeline, tiny_call_kwargs])
def test_unknown_name(fn: Callable[..., object]) -> None:
    with pytest.raises(ValueError) as excinfo:
        fn("tiny-nope")
    message = str(excinfo.value)
    assert "tiny-nope" in message
    assert all(name in message for name in TINY_MODELS)
