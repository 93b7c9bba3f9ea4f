"""The embedded model's pipeline follows diffusers' conventions: every test makes the same calls on it and on a
diffusers tiny pipeline (Stable Diffusion, random weights: its pipeline has every convention) and checks the same
behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffattn.pipelines.tiny_shapes import pipeline as tm
from diffattn.tiny import tiny_call_kwargs

EMBEDDED, DIFFUSERS = "embedded", "tiny-sd"
CAPTION = "a red ring on a blue background"


@pytest.fixture(scope="module")
def embedded():
    return tm.tiny_model()


@pytest.fixture(params=[EMBEDDED, DIFFUSERS])
def case(request, embedded, pipelines):
    """(pipeline, base call kwargs) of the embedded model and of a diffusers tiny pipeline."""
    if request.param == EMBEDDED:
        return embedded, {"prompt": CAPTION, "height": 32, "width": 32, "num_inference_steps": 2}
    kw = tiny_call_kwargs(DIFFUSERS)
    for key in ("generator", "output_type"):
        kw.pop(key)
    return pipelines.pipe(DIFFUSERS), kw


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_callback_on_step_end_sees_each_step_and_may_replace_latents(case):
    pipe, kw = case
    seen = []

    def record(p, i, t, tensors):
        seen.append((p is pipe, i, sorted(tensors)))
        return tensors

    base = pipe(**kw, generator=_gen(), output_type="pt").images
    same = pipe(**kw, generator=_gen(), output_type="pt", callback_on_step_end=record,
                callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"]).images
    assert torch.equal(base, same)  # a callback returning its inputs changes nothing
    steps = kw["num_inference_steps"]
    assert seen == [(True, i, ["latents", "prompt_embeds"]) for i in range(steps)]

    def zero_last(p, i, t, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if i == steps - 1 else {}

    changed = pipe(**kw, generator=_gen(), output_type="pt", callback_on_step_end=zero_last).images
    assert not torch.equal(changed, base)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe(**kw, generator=_gen(), callback_on_step_end=record, callback_on_step_end_tensor_inputs=["bogus"])


@pytest.mark.parametrize("output_type", ["pt", "np", "pil", "latent"])
def test_output_types(case, output_type):
    pipe, kw = case
    out = pipe(**kw, generator=_gen(), output_type=output_type).images
    h, w = kw["height"], kw["width"]
    if output_type == "pt":
        assert out.shape == (1, 3, h, w) and 0 <= out.min() and out.max() <= 1
    elif output_type == "np":
        assert isinstance(out, np.ndarray) and out.shape == (1, h, w, 3)
    elif output_type == "pil":
        assert out[0].size == (w, h)
    else:  # the denoiser's own space: what `latents=` takes back
        assert isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[0] == 1
        if not hasattr(pipe, "vae"):  # pixel space: the image itself, in [-1, 1]
            pt = pipe(**kw, generator=_gen(), output_type="pt").images
            assert torch.equal((out / 2 + 0.5).clamp(0, 1), pt)


def test_latents_input_is_the_starting_noise(case):
    pipe, kw = case
    shape = pipe(**kw, generator=_gen(), output_type="latent").images.shape
    noise = torch.randn(shape, generator=_gen(3))
    from_noise = pipe(**kw, latents=noise, output_type="pt").images
    from_seed = pipe(**kw, generator=_gen(3), output_type="pt").images
    assert torch.equal(from_noise, from_seed)


def test_num_images_per_prompt_and_generator_lists(case):
    pipe, kw = case
    pair = pipe(**kw, num_images_per_prompt=2, generator=[_gen(1), _gen(2)], output_type="pt").images
    assert pair.shape[0] == 2
    for k, seed in enumerate((1, 2)):
        single = pipe(**kw, generator=_gen(seed), output_type="pt").images[0]
        torch.testing.assert_close(pair[k], single, atol=2e-4, rtol=0)  # batching changes only rounding
    with pytest.raises(ValueError, match="generators"):
        pipe(**kw, num_images_per_prompt=2, generator=[_gen(1)], output_type="pt")


def test_return_dict(case):
    pipe, kw = case
    as_tuple = pipe(**kw, generator=_gen(), output_type="pt", return_dict=False)
    as_output = pipe(**kw, generator=_gen(), output_type="pt")
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], as_output.images)


def test_progress_bar_follows_set_progress_bar_config(case, capsys):
    pipe, kw = case
    before = dict(getattr(pipe, "_progress_bar_config", {}))
    try:
        pipe.set_progress_bar_config(disable=False)
        pipe(**kw, generator=_gen(), output_type="pt")
        shown = capsys.readouterr().err
        pipe.set_progress_bar_config(disable=True)
        pipe(**kw, generator=_gen(), output_type="pt")
        hidden = capsys.readouterr().err
    finally:
        pipe._progress_bar_config = before
    assert f"{kw['num_inference_steps']}/{kw['num_inference_steps']}" in shown and hidden == ""


def test_check_inputs_runs_first_and_refuses_bad_sizes(case, monkeypatch):
    pipe, kw = case
    calls = []
    original = pipe.check_inputs
    monkeypatch.setattr(pipe, "check_inputs", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    pipe(**kw, generator=_gen(), output_type="pt")
    assert calls == [1]
    with pytest.raises(ValueError, match="height"):
        pipe(**{**kw, "height": 30}, generator=_gen())


def test_embedded_refuses_bad_arguments_before_any_work(embedded):
    kw = {"prompt": CAPTION, "num_inference_steps": 2}
    with pytest.raises(ValueError, match="output_type must be one of"):
        embedded(**kw, output_type="latents")
    with pytest.raises(ValueError, match="num_images_per_prompt must be an int >= 1, got 0"):
        embedded(**kw, num_images_per_prompt=0)
    with pytest.raises(ValueError, match="num_inference_steps must be an int >= 1, got 0"):
        embedded(CAPTION, num_inference_steps=0)
    with pytest.raises(ValueError, match=r"latents must have shape \(1, 3, 32, 32\)"):
        embedded(**kw, latents=torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="exactly one of prompt and prompt_embeds"):
        embedded(num_inference_steps=2)


def test_embedded_prompt_embeds(embedded):
    kw = {"num_inference_steps": 3, "output_type": "pt"}
    pos, neg = embedded.encode_prompt(CAPTION, True)
    by_text = embedded(CAPTION, generator=_gen(), **kw).images
    by_embeds = embedded(prompt_embeds=pos, negative_prompt_embeds=neg, generator=_gen(), **kw).images
    assert torch.equal(by_text, by_embeds)


def test_interrupt_skips_the_remaining_steps(case):
    pipe, kw = case
    steps = []

    def stop(p, i, t, tensors):
        steps.append(i)
        p._interrupt = True
        return {}

    pipe(**{**kw, "num_inference_steps": 3}, generator=_gen(), callback_on_step_end=stop, output_type="pt")
    assert steps == [0]  # the steps after an interrupt are skipped, as in diffusers
