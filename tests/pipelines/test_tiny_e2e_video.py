"""End to end on the newer tiny pipelines of `diffattn.tiny.newer` (``TinySpec.core=False``): Wan 2.2 with two
experts, FLUX Kontext with a reference image, LTX-2 (video + audio). Each builds offline and runs
deterministically; GNA with a small window runs sparse in every denoiser with no fallback and changes the
output; a window covering the grid is dense; remove is bit-exact; ``diffattn generate`` runs it."""

from __future__ import annotations

import pytest
import torch

import diffattn
from diffattn.cli import main
from diffattn.models.denoisers import denoisers_of
from diffattn.tiny import TINY_SPECS, build_tiny_pipeline, tiny_call_kwargs, tiny_output
from diffattn.tiny.core import seeded
from diffattn.tiny.encoders import TEXT_LEN
from diffattn.tiny.newer import KONTEXT_IMAGE_SIZE

NAMES = ("tiny-wan22", "tiny-flux-kontext", "tiny-ltx2")
# window large enough to cover every tiny grid (clamped per axis, so it is exactly dense)
HUGE = 10**6

# per pipeline: the denoiser attributes, the grid of the patched self-attention and its dense (extra) keys
EXPECTED = {
    # 96x128 px, 9 frames -> VAE (4, 8, 8) -> 3x12x16 latent, patch (1, 2, 2)
    "tiny-wan22": (("transformer", "transformer_2"), (3, 6, 8), 0),
    # 32x48 px -> VAE 2 -> 16x24 latent, 2x2 packing; the text and the KONTEXT_IMAGE_SIZE px reference image
    # (packed the same way) are the dense keys of the joint attention
    "tiny-flux-kontext": (("transformer",), (8, 12), TEXT_LEN + (KONTEXT_IMAGE_SIZE // 4) ** 2),
    # 32x32 px, 9 frames -> video VAE /4 in space and time, patch 1; audio attends in its own modules
    "tiny-ltx2": (("transformer",), (3, 8, 8), 0),
}


def _expected_shape(name: str) -> tuple[int, ...]:
    kw = tiny_call_kwargs(name)
    if "num_frames" in kw:
        return (1, kw["num_frames"], 3, kw["height"], kw["width"])
    return (1, 3, kw["height"], kw["width"])


@pytest.fixture(params=NAMES)
def e2e(request, pipelines):
    """(name, pipeline, unpatched output) per pipeline, from the session cache."""
    name = request.param
    return name, pipelines.pipe(name), pipelines.output(name)


def test_specs_are_newer_families():
    assert all(name in TINY_SPECS and not TINY_SPECS[name].core for name in NAMES)


def test_builds_offline_and_runs_deterministically(e2e):
    name, pipe, base = e2e
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            assert not component.training
            assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in component.parameters())
    assert base.shape == _expected_shape(name)
    assert torch.isfinite(base).all() and base.std() > 0
    assert torch.equal(tiny_output(pipe, name), base)


def test_every_denoiser_runs_sparse_and_remove_is_bit_exact(e2e):
    name, pipe, base = e2e
    attrs, grid, extra = EXPECTED[name]
    assert [a for a, _ in denoisers_of(pipe)] == list(attrs)
    handle = diffattn.apply_attention(pipe, "gna", window=3)
    try:
        out = tiny_output(pipe, name)
        stats = handle.stats()
    finally:
        handle.remove()
    for attr in attrs:
        mine = {n: s for n, s in stats.items() if n.split(".", 1)[0] == attr}
        assert mine, f"no module of {attr} was patched: {sorted(stats)}"
        assert all(s.sparse > 0 and s.fallback == 0 for s in mine.values()), (attr, mine)
        assert all(s.grid == grid and s.extra == extra for s in mine.values()), (attr, mine)
    assert handle.fallback_calls == 0
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, base, atol=1e-4)
    assert torch.equal(tiny_output(pipe, name), base)


def test_window_covering_grid_equals_dense(e2e):
    name, pipe, base = e2e
    with diffattn.attention(pipe, "gna", window=HUGE) as h:
        out = tiny_output(pipe, name)
    assert h.sparse_calls > 0 and h.fallback_calls == 0
    torch.testing.assert_close(out, base, atol=1e-4, rtol=1e-4)


def test_wan22_runs_each_expert_on_its_own_steps():
    """boundary_ratio: the high-noise steps run ``transformer``, the later ones ``transformer_2``; every
    step is one cond + one uncond call of one expert."""
    name = "tiny-wan22"
    pipe = build_tiny_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    steps = 3
    with diffattn.attention(pipe, "gna", window=3) as h:
        tiny_output(pipe, name, num_inference_steps=steps)
    calls = {attr: {s.sparse for n, s in h.stats().items() if n.split(".", 1)[0] == attr} for attr in EXPECTED[name][0]}
    pipe.scheduler.set_timesteps(steps)
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    high = int((pipe.scheduler.timesteps >= boundary).sum())
    assert 0 < high < steps
    assert calls == {"transformer": {2 * high}, "transformer_2": {2 * (steps - high)}}


def test_kontext_reference_image_reaches_the_output():
    """The reference tokens are attended (densely) under GNA: another image changes the output."""
    name = "tiny-flux-kontext"
    pipe = build_tiny_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    image = tiny_call_kwargs(name)["image"]
    with diffattn.attention(pipe, "gna", window=3) as h:
        a = tiny_output(pipe, name)
        b = tiny_output(pipe, name, image=image.flip(-1))
    assert h.fallback_calls == 0 and not torch.allclose(a, b, atol=1e-4)


def test_kontext_size_override_keeps_the_size():
    """Kontext rescales to ``max_area``: the tiny call kwargs keep an overridden size exactly."""
    pipe = build_tiny_pipeline("tiny-flux-kontext")
    pipe.set_progress_bar_config(disable=True)
    out = tiny_output(pipe, "tiny-flux-kontext", height=24, width=40)
    assert out.shape == (1, 3, 24, 40)


def test_ltx2_audio_modules_stay_dense():
    """Only LTX-2's video self-attention is patched: the audio self-attention and the audio<->video
    cross-attention are not token grids of the video."""
    pipe = build_tiny_pipeline("tiny-ltx2")
    with diffattn.attention(pipe, "gna", window=3) as h:
        names = h.modules
    layers = pipe.transformer.config.num_layers
    assert sorted(names) == [f"transformer.transformer_blocks.{i}.attn1" for i in range(layers)]


@pytest.mark.slow
def test_ltx2_stg_pass_skips_the_perturbed_blocks():
    """LTX-2.3 style guidance (``perturbed_attn`` + STG + modality isolation, three transformer passes per
    step): in the STG pass the perturbed block returns its value projection without attention, so that module
    counts no call for it; every call that attends runs sparse, and a covering window is exactly dense."""
    from diffusers import LTX2VideoTransformer3DModel

    name = "tiny-ltx2"
    pipe = build_tiny_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    pipe.transformer = seeded(0, lambda: LTX2VideoTransformer3DModel(**{**config, "perturbed_attn": True})).eval()
    guidance = {"stg_scale": 1.0, "modality_scale": 3.0, "spatio_temporal_guidance_blocks": [1]}
    base = tiny_output(pipe, name, **guidance)
    with diffattn.attention(pipe, "gna", window=3) as h:
        out = tiny_output(pipe, name, **guidance)
    steps = tiny_call_kwargs(name)["num_inference_steps"]
    calls = {n: (s.sparse, s.fallback) for n, s in h.stats().items()}
    assert calls == {
        "transformer.transformer_blocks.0.attn1": (3 * steps, 0),  # CFG batch, STG and isolated passes
        "transformer.transformer_blocks.1.attn1": (2 * steps, 0),  # no attention in the STG pass
    }
    assert not torch.allclose(out, base, atol=1e-4)
    with diffattn.attention(pipe, "gna", window=HUGE):
        torch.testing.assert_close(tiny_output(pipe, name, **guidance), base, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_generate_cli_runs(tmp_path, capsys, name):
    argv = ["generate", "--model", name, "--window", "3", "--no-dense", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    suffix = ".gif" if tiny_call_kwargs(name).get("num_frames") else ".png"
    assert (tmp_path / f"gna{suffix}").stat().st_size > 0
    assert "0 dense-fallback" in out and " 0 sparse" not in out
