"""A new generation is detected on every pipeline kind we ship (issue 23 §4): on one handle, a second
generation with other prompts gives exactly what a fresh handle gives, for every stateful or step-dependent
method (freeswim's per-generation cross-attention cache and CFG branch, agent's step window, msw's
per-timestep shifts), with or without the pipeline's ``check_inputs`` (the embedded model has none).
The lifecycle toy method is checked the same way in tests/methods/test_lifecycle.py."""

from __future__ import annotations

import logging

import pytest
import torch

import diffattn
from diffattn.pipelines.tiny_shapes import data as shapes
from diffattn.tiny import CORE_TINY_MODELS, tiny_output

PROMPTS = ("a red fox in the snow", "a lighthouse at dusk, oil painting")
#: knobs that make each method differ from dense on the tiny grids; agent only on step 0 (its step window)
KNOBS = {
    "freeswim": dict(train_grid=3, cache_steps=2),
    "agent": dict(ratio=0.25, steps=(0, 1)),
    "msw": dict(window=2),
}
#: where each method is checked: freeswim on every family with separate cross-attention (it refuses the joint
#: ones: SD3, FLUX, CogVideoX, ...); agent's step window on every family; msw's shifts are a pure function of
#: (seed, layer, timestep), so one UNet and one joint DiT suffice
FAMILIES = {
    "freeswim": ("tiny-sd", "tiny-sdxl", "tiny-pixart-alpha", "tiny-pixart-sigma", "tiny-wan"),
    "agent": CORE_TINY_MODELS,
    "msw": ("tiny-sd", "tiny-flux"),
}
CASES = [pytest.param(name, method, id=f"{method}-{name}") for method in KNOBS for name in FAMILIES[method]]


def _second_generation(pipe, run, method: str, knobs: dict, caplog) -> tuple[torch.Tensor, torch.Tensor]:
    """(first generation, second generation) on one handle."""
    with caplog.at_level(logging.WARNING, logger="diffattn"), diffattn.attention(pipe, method, preset=False, **knobs):
        first = run(PROMPTS[0], 1)
        second = run(PROMPTS[1], 2)
    return first, second


def _fresh(pipe, run, method: str, knobs: dict) -> torch.Tensor:
    with diffattn.attention(pipe, method, preset=False, **knobs):
        return run(PROMPTS[1], 2)


@pytest.mark.parametrize("name,method", CASES)
def test_second_generation_equals_a_fresh_handle(pipelines, name, method, caplog):
    pipe = pipelines.pipe(name)

    def run(prompt: str, seed: int) -> torch.Tensor:
        return tiny_output(pipe, name, prompt=prompt, seed=seed)

    first, second = _second_generation(pipe, run, method, KNOBS[method], caplog)
    assert torch.equal(second, _fresh(pipe, run, method, KNOBS[method]))
    assert not torch.equal(first, second)
    assert "cannot tell the conditional pass" not in caplog.text and "made no attention call" not in caplog.text


class _NoCheckInputs:
    """A text-to-image pipeline with ``encode_prompt`` and no ``check_inputs`` (batched CFG over a tiny SD's
    components), like the embedded model and any hand-written loop: only the prompt encoding marks a new
    generation."""

    def __init__(self, pipe) -> None:
        self.unet, self.scheduler, self.sd = pipe.unet, pipe.scheduler, pipe

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sd.encode_prompt(prompt, "cpu", 1, True, "")

    def __call__(self, prompt: str, seed: int, steps: int = 3) -> torch.Tensor:
        pos, neg = self.encode_prompt(prompt)
        text = torch.cat([neg, pos])  # [uncond, cond], diffusers' order
        self.scheduler.set_timesteps(steps)
        x = torch.randn(1, self.unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            for t in self.scheduler.timesteps:
                eps = self.unet(torch.cat([x, x]), t, encoder_hidden_states=text).sample
                uncond, cond = eps.chunk(2)
                x = self.scheduler.step(uncond + 5.0 * (cond - uncond), t, x).prev_sample
        return x


@pytest.mark.parametrize("method", list(KNOBS))
def test_new_generation_without_check_inputs(pipelines, method, caplog):
    """The issue's case: freeswim kept the first generation's embeddings, so the second could not tell its
    conditional rows and ran the window branch only (differing from a fresh handle by up to 0.99)."""
    pipe = _NoCheckInputs(pipelines.pipe("tiny-sd"))
    assert not hasattr(pipe, "check_inputs")
    first, second = _second_generation(pipe, pipe, method, KNOBS[method], caplog)
    assert torch.equal(second, _fresh(pipe, pipe, method, KNOBS[method]))
    assert not torch.equal(first, second)
    assert "cannot tell the conditional pass" not in caplog.text and "made no attention call" not in caplog.text


@pytest.fixture(scope="module")
def embedded():
    return diffattn.tiny_model()


@pytest.mark.parametrize("method", list(KNOBS))
def test_embedded_model_second_generation_equals_a_fresh_handle(embedded, method, caplog):
    """The embedded model at 2x its training size (16x16 tokens, an 8x8 training grid for freeswim), two
    captions per generation, batched CFG."""
    captions = shapes.captions(shapes.sample_scenes(4, seed=1))
    by_prompt = {PROMPTS[0]: captions[:2], PROMPTS[1]: captions[2:]}
    knobs = dict(KNOBS[method], train_grid=8) if method == "freeswim" else KNOBS[method]

    def run(prompt: str, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        out = embedded(by_prompt[prompt], height=64, width=64, num_inference_steps=3, generator=generator,
                       output_type="pt")
        return out.images

    first, second = _second_generation(embedded, run, method, knobs, caplog)
    assert torch.equal(second, _fresh(embedded, run, method, knobs))
    assert not torch.equal(first, second)
    assert "cannot tell the conditional pass" not in caplog.text and "made no attention call" not in caplog.text
