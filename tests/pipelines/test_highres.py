"""High-resolution pipelines: two stages on PixArt, FLUX and Wan and one stage + RAU-Net on SD, from the
CLI end to end; the re-noise schedule; bad input leaves the pipeline unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from diffattn import cli
from diffattn.pipelines.highres import generate_highres, generate_highres_video, upsample_latents
from diffattn.tiny import tiny_call_kwargs
from tests.helpers import processors, same_objects

# model -> CLI size arguments (targets 2x the tiny base per side)
CLI_CASES = {
    "tiny-pixart-alpha": ["--height", "64", "--width", "64"],  # base = training size 32x32
    "tiny-flux": ["--height", "64", "--width", "96", "--base-height", "32", "--base-width", "48"],
    "tiny-wan": ["--height", "160", "--width", "192", "--frames", "9", "--base-height", "96", "--base-width", "128"],
    "tiny-sd": ["--height", "64", "--width", "64", "--raunet", "--steps", "5"],
}
# the refine method each family gets by default
DEFAULT_METHOD = {"tiny-pixart-alpha": "freeswim", "tiny-flux": "gna", "tiny-wan": "freeswim", "tiny-sd": "msw"}


@pytest.mark.slow
@pytest.mark.parametrize("model", list(CLI_CASES))
def test_cli_end_to_end(model, tmp_path, capsys):
    rc = cli.main(["highres", "--model", model, "--out", str(tmp_path), *CLI_CASES[model]])
    assert rc == 0
    captured = capsys.readouterr()
    record = json.loads((tmp_path / "highres.json").read_text())
    suffix = ".gif" if model == "tiny-wan" else ".png"
    assert (tmp_path / f"highres{suffix}").stat().st_size > 0
    last = record["stages"][-1]
    assert last["method"] == DEFAULT_METHOD[model]
    assert sum(s["sparse"] for s in last["stats"].values()) > 0
    assert all(s["fallback"] == 0 for s in last["stats"].values())
    if model == "tiny-sd":  # one stage at the target, msw + RAU-Net
        assert [s["name"] for s in record["stages"]] == ["target"] and record["raunet"]
        assert "one stage" in captured.err
    else:  # stage 1 dense at the base size, stage 2 re-runs int(3 * 0.7) = 2 of 3 steps at the target
        assert [(s["name"], s["steps"]) for s in record["stages"]] == [("base", 3), ("refine", 2)]
        assert "stage 1/2" in captured.err and "stage 2/2" in captured.err
    if last["method"] == "freeswim":
        assert sum(s["cross_cached"] for s in last["stats"].values()) > 0


def _kw(name):
    kw = tiny_call_kwargs(name)
    for key in ("height", "width", "num_inference_steps", "output_type", "prompt", "num_frames", "generator"):
        kw.pop(key, None)
    return kw


def test_refine_runs_the_strength_tail_from_renoised_latents(pipelines):
    name = "tiny-pixart-alpha"
    pipe = pipelines.pipe(name)
    before = processors(pipe)
    timesteps = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: timesteps.append(float(k["timestep"].flatten()[0])), with_kwargs=True
    )
    try:
        out, record = generate_highres(
            pipe, "a fox", 64, 64, num_inference_steps=10, strength=0.5, output_type="pt",
            generator=torch.Generator().manual_seed(0), **_kw(name),
        )
    finally:
        hook.remove()
    full = pipe.scheduler.timesteps.tolist()  # the last call's schedule: the kept tail
    assert len(timesteps) == 10 + 5  # stage 1 all steps, stage 2 the last int(10 * 0.5) of them
    assert timesteps[10:] == full and len(full) == 5
    assert timesteps[10:] == timesteps[5:10]  # the same timesteps stage 1 ended with
    assert out.images.shape[-2:] == (64, 64) and torch.isfinite(out.images).all()
    assert record.stages[1].steps == 5 and record.upsample == "latent-bicubic"
    assert same_objects(processors(pipe), before) and "set_timesteps" not in pipe.scheduler.__dict__


def test_video_record_and_frames(pipelines):
    name = "tiny-wan"
    pipe = pipelines.pipe(name)
    out, record = generate_highres_video(
        pipe, "a fox", 160, 192, 9, num_inference_steps=3, base_height=96, base_width=128, output_type="pt",
        **_kw(name),
    )
    assert out.frames.shape[1:] == (9, 3, 160, 192)
    refine = record.stages[1]
    assert (refine.method, refine.knobs, refine.num_frames) == ("freeswim", {"train_grid": (6, 8)}, 9)
    assert record.stages[0].seconds > 0 and refine.seconds > 0


def test_upsample_latents_per_frame():
    x = torch.randn(1, 2, 3, 4, 5)
    up = upsample_latents(x, (8, 10))
    assert up.shape == (1, 2, 3, 8, 10)
    for f in range(3):  # each frame resized on its own
        frame = torch.nn.functional.interpolate(x[:, :, f], size=(8, 10), mode="bicubic")
        torch.testing.assert_close(up[:, :, f], frame)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(strength=0.0), r"strength=0.0 must be in \(0, 1\]"),
        (dict(strength=1.5), r"strength=1.5 must be in \(0, 1\]"),
        (dict(height=16, width=64), r"target 16x64 must be at least the base \(training\) resolution 32x32"),
        (dict(height=32, width=32), r"target 32x32 must be at least"),
        (dict(raunet=True), r"raunet=True needs a UNet pipeline"),
        (dict(method="nope"), r"unknown attention method 'nope'"),
        (dict(method="freeswim", knobs={"train_grid": 8, "cache_steps": 0}), r"cache_steps=0 must be an int >= 1"),
        (dict(strength=0.1), r"strength=0.1 keeps int\(3 \* 0.1\) = 0 of 3 steps"),
    ],
    ids=["strength0", "strength>1", "smaller", "same-size", "raunet-dit", "bad-method", "bad-knob", "no-steps"],
)
def test_bad_input_leaves_pipeline_unchanged(kwargs, match, pipelines):
    name = "tiny-pixart-alpha"
    pipe = pipelines.pipe(name)
    before = processors(pipe)
    call = dict(height=64, width=64, num_inference_steps=3, output_type="pt")
    call.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate_highres(pipe, "a fox", **call, **_kw(name))
    assert same_objects(processors(pipe), before) and "set_timesteps" not in pipe.scheduler.__dict__
    assert not pipe.transformer._forward_pre_hooks


def test_unet_target_below_training_and_cli_error(capsys):
    rc = cli.main(["highres", "--model", "tiny-sd", "--height", "16", "--width", "64", "--out", "/nonexistent/x"])
    assert rc == 2
    assert "target 16x64 must be at least the training resolution 32x32" in capsys.readouterr().err


# ---- the embedded model: pixel space, no VAE -----------------------------------------------------------


@pytest.fixture(scope="module")
def embedded():
    from diffattn.pipelines.tiny_shapes import tiny_model

    return tiny_model()


CAPTIONS = ["a red ring on a blue background", "white vertical stripes on a black background"]


@pytest.mark.parametrize("scale", [2, 4], ids=["2x", "4x"])
def test_two_stage_on_the_embedded_model(embedded, scale):
    from diffattn.pipelines.highres import training_size

    size = 32 * scale
    before = processors(embedded)
    assert training_size(embedded) == (32, 32)  # pixel space: the transformer's sample size, no VAE factor
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    out, record = generate_highres(embedded, CAPTIONS, size, size, num_inference_steps=4, strength=0.5,
                                   generator=gens, output_type="pt")
    assert out.images.shape == (2, 3, size, size) and 0 <= out.images.min() and out.images.max() <= 1
    assert [(s.name, s.height, s.steps) for s in record.stages] == [("base", 32, 4), ("refine", size, 2)]
    assert record.upsample == "pixel-bicubic" and record.base.shape == (2, 3, 32, 32)
    refine = record.stages[1]
    assert refine.method == "freeswim" and refine.knobs == {"train_grid": (8, 8)}  # the stage-1 token grid
    assert sum(s["sparse"] for s in refine.stats.values()) > 0
    assert all(s["fallback"] == 0 for s in refine.stats.values())
    assert same_objects(processors(embedded), before) and "set_timesteps" not in embedded.scheduler.__dict__
    as_json = json.loads(json.dumps(record.to_dict(), default=str))  # the stage-1 tensor stays out of the JSON
    assert "base" not in as_json and as_json["stages"][1]["method"] == "freeswim"


def test_embedded_refine_starts_from_the_upscaled_stage_one_image(embedded):
    """With one low-noise refine step the result must stay at the bicubic upscale of the stage-1 image: the
    [0, 1] image is mapped to the model's [-1, 1] space and back (a wrong mapping shifts every pixel)."""
    from diffattn.pipelines.highres import upsample_latents

    out, record = generate_highres(embedded, CAPTIONS[:1], 64, 64, method="gna", knobs={"window": 8, "stride": 1},
                                   num_inference_steps=10, strength=0.1, generator=torch.Generator().manual_seed(0),
                                   output_type="pt")
    upscaled = (upsample_latents(record.base, (64, 64)) / 2 + 0.5).clamp(0, 1)
    assert record.stages[1].steps == 1
    assert (out.images - upscaled).abs().mean() < 0.01


def test_embedded_two_stage_is_per_image_with_a_generator_list(embedded):
    kw = dict(num_inference_steps=3, strength=0.7, output_type="pt")
    pair, _ = generate_highres(embedded, CAPTIONS, 64, 64, generator=[torch.Generator().manual_seed(s) for s in (5, 6)],
                               **kw)
    one, _ = generate_highres(embedded, CAPTIONS[1:], 64, 64, generator=[torch.Generator().manual_seed(6)], **kw)
    torch.testing.assert_close(pair.images[1], one.images[0], atol=2e-4, rtol=0)
