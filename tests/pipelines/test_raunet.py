"""RAU-Net (HiDiffusion's resolution-aware UNet) on the tiny SD and SDXL layouts."""

from __future__ import annotations

import pytest
import torch

import diffattn
from diffattn.patch import SwapSubmodule
from diffattn.pipelines.raunet import RAUNetConfig, apply_raunet, raunet_layout
from diffattn.tiny import build_tiny_pipeline, tiny_output
from tests.helpers import processors, same_objects

# 2x the native latent size per side (tiny-sd trains at 16x16 latents, tiny-sdxl at 32x32); 5 steps so
# that int(0.4 * 5) = 2 steps run switched
CASES = {"tiny-sd": dict(height=64, width=64), "tiny-sdxl": dict(height=128, width=128)}
STEPS = 5


def _snapshot(pipe):
    unet = pipe.unet
    return (
        dict(unet.named_modules()),
        {k: v.clone() for k, v in unet.state_dict().items()},
        dict(unet.__dict__),
        processors(pipe),
    )


def _assert_unchanged(pipe, snap, ref, name):
    modules, state, attrs, procs = snap
    now = dict(pipe.unet.named_modules())
    assert now.keys() == modules.keys() and all(now[k] is modules[k] for k in now)
    assert pipe.unet.__dict__ == attrs
    assert same_objects(processors(pipe), procs)
    after = pipe.unet.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert torch.equal(tiny_output(pipe, name, num_inference_steps=STEPS, **CASES[name]), ref)


@pytest.fixture(params=list(CASES))
def unet_pipe(request, pipelines):
    name = request.param
    return name, pipelines.pipe(name), pipelines.output(name, num_inference_steps=STEPS, **CASES[name])


def test_layout_is_hidiffusions(unet_pipe):
    name, pipe, _ = unet_pipe
    layout = raunet_layout(pipe.unet)
    if name == "tiny-sd":  # conv switch in down_blocks.0, pool switch in down_blocks.1 and its mirror
        assert (layout.family, layout.conv_block, layout.pool_block) == ("sd", 0, 1)
    else:  # SDXL: both switches in down_blocks.1
        assert (layout.family, layout.conv_block, layout.pool_block) == ("sdxl", 1, 1)
    assert layout.up_block == len(pipe.unet.up_blocks) - 2


def test_hidiffusion_schedule():
    sd = raunet_layout(build_tiny_pipeline("tiny-sd").unet)  # training latent 16
    cfg = RAUNetConfig()
    # below 4x: T1 = 0.4 (conv switch), T2 = 0 (no pool switch) -> of 10 steps, steps 0-3 switched
    assert [sd.active(s, 10, 32, 32, cfg) for s in (0, 3, 4)] == [(True, False), (True, False), (False, False)]
    # from 4x on a side: T1 = 0.7, T2 = 0.3
    assert [sd.active(s, 10, 64, 64, cfg) for s in (2, 3, 6, 7)] == [
        (True, True),
        (True, False),
        (True, False),
        (False, False),
    ]
    assert sd.active(0, 10, 16, 16, cfg) == (False, False)  # not above the training size: nothing switches


def test_runs_at_2x_changes_output_and_undoes_bit_exactly(unet_pipe):
    name, pipe, ref = unet_pipe
    snap = _snapshot(pipe)
    handle = apply_raunet(pipe)
    assert list(pipe.unet.state_dict()) == list(snap[1])  # the shells keep the weights' names
    out = tiny_output(pipe, name, num_inference_steps=STEPS, **CASES[name])
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out - ref).abs().max() > 1e-3
    handle.remove()
    _assert_unchanged(pipe, snap, ref, name)


@pytest.mark.slow
def test_joins_the_msw_handle(unet_pipe):
    name, pipe, ref = unet_pipe
    snap = _snapshot(pipe)
    handle = diffattn.apply_attention(pipe, "msw")
    apply_raunet(pipe, handle)
    out = tiny_output(pipe, name, num_inference_steps=STEPS, **CASES[name])
    assert handle.sparse_calls > 0 and handle.fallback_calls == 0  # msw read every pooled/4x grid
    assert (out - ref).abs().max() > 1e-3
    handle.remove()
    _assert_unchanged(pipe, snap, ref, name)


@pytest.mark.parametrize("fail_at", [1, 3], ids=lambda n: f"swap{n}")
def test_failure_mid_install_leaves_pipeline_bit_identical(unet_pipe, monkeypatch, fail_at):
    name, pipe, ref = unet_pipe
    snap = _snapshot(pipe)
    calls = {"n": 0}
    original = SwapSubmodule.apply

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("injected")
        original(self)

    monkeypatch.setattr(SwapSubmodule, "apply", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        apply_raunet(pipe)
    assert calls["n"] == fail_at
    monkeypatch.undo()
    _assert_unchanged(pipe, snap, ref, name)


def test_failure_keeps_an_existing_handle(unet_pipe, monkeypatch):
    name, pipe, _ = unet_pipe
    handle = diffattn.apply_attention(pipe, "msw")
    try:
        before = processors(pipe)
        monkeypatch.setattr(SwapSubmodule, "apply", lambda self: (_ for _ in ()).throw(RuntimeError("injected")))
        with pytest.raises(RuntimeError, match="injected"):
            apply_raunet(pipe, handle)
        assert not handle.removed and same_objects(processors(pipe), before)
    finally:
        monkeypatch.undo()
        handle.remove()


def test_unknown_layout_is_refused_and_nothing_changes():
    from diffusers import UNet2DConditionModel

    pipe = build_tiny_pipeline("tiny-sd")
    pipe.unet = UNet2DConditionModel(
        sample_size=16,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    before = dict(pipe.unet.named_modules())
    with pytest.raises(ValueError, match=r"RAU-Net does not know the block layout.*DownBlock2D, DownBlock2D"):
        apply_raunet(pipe)
    assert dict(pipe.unet.named_modules()) == before


@pytest.mark.parametrize(
    "knobs, match",
    [({"t1": 1.5}, r"t1=1.5 must be a fraction of the steps in \[0, 1\]"), ({"t2": -0.1}, r"t2=-0.1")],
    ids=["t1>1", "t2<0"],
)
def test_bad_knobs(knobs, match):
    with pytest.raises(ValueError, match=match):
        RAUNetConfig(**knobs)


def test_dit_is_refused():
    pipe = build_tiny_pipeline("tiny-pixart-alpha")
    with pytest.raises(ValueError, match="RAU-Net needs a UNet pipeline"):
        apply_raunet(pipe)


# --------------------------------------------------------------------------- image-to-image (issue 23)


def _img2img(name: str):
    """The img2img pipeline of ``name``'s components (tiny-sd: DDIM, no begin index; tiny-sdxl: Euler, which
    img2img gives a begin index)."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    base = build_tiny_pipeline(name)
    cls = StableDiffusionImg2ImgPipeline if name == "tiny-sd" else StableDiffusionXLImg2ImgPipeline
    pipe = cls(**base.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _switch_log(pipe, layout):
    """Per UNet call, whether the conv switch (4x downsampler) and the pool switch were on, read from the
    shapes the installed modules produce (so it observes what ran, not RAU-Net's own bookkeeping)."""
    unet = pipe.unet
    log = []
    conv = unet.down_blocks[layout.conv_block].downsamplers[0]
    pool = unet.down_blocks[layout.pool_block].attentions[0]

    def on_unet(module, args, kwargs):
        log.append([None, None])

    def on_conv(module, args, out):  # the downsampler: 2x gives ceil(W / 2) columns, the 4x switch fewer
        log[-1][0] = out.shape[-1] < (args[0].shape[-1] + 1) // 2

    def on_pool(module, args, kwargs, out):  # pooled: fewer columns than it received
        hidden = args[0] if args else kwargs["hidden_states"]
        log[-1][1] = (out[0] if isinstance(out, tuple) else out.sample).shape[-1] < hidden.shape[-1]

    hooks = [
        unet.register_forward_pre_hook(on_unet, with_kwargs=True),
        conv.register_forward_hook(on_conv),
        pool.register_forward_hook(on_pool, with_kwargs=True),
    ]
    return log, hooks


def _hidiffusion_switches(family: str, calls: int, steps_run: int) -> list[tuple[bool, bool]]:
    """HiDiffusion's switches, re-stated from its code, below 4x the training size: a counter of UNet calls
    from 0 against ``T = int(ratio * pipe._num_timesteps)`` (the steps the pipeline runs); SD: conv while
    ``count < int(0.4 n)``; SDXL (aggressive): conv while ``count < int(8 / 50 n)``, pool from there to
    ``int(0.4 n)``."""
    t1, start = int(steps_run * 0.4), int(8 / 50 * steps_run)
    if family == "sd":
        return [(c < t1, False) for c in range(calls)]
    return [(c < start, start <= c < t1) for c in range(calls)]


@pytest.mark.parametrize(
    "name, runs",
    [("tiny-sd", ((50, 0.7), (10, 0.5))), ("tiny-sdxl", ((15, 0.7), (10, 0.5)))],
    ids=["sd-ddim", "sdxl-euler-begin-index"],
)
def test_img2img_counts_the_steps_it_runs(name, runs):
    """issue 23: img2img runs the tail of the schedule; RAU-Net looked the step up in the scheduler's full list
    (sd at strength 0.7 over 50 steps: switched 5 calls, HiDiffusion 14). Two generations on one handle, the
    second at another strength, so each one counts from its own first call."""
    pipe = _img2img(name)
    size = CASES[name]
    image = torch.rand(1, 3, size["height"], size["width"], generator=torch.Generator().manual_seed(0))
    layout = raunet_layout(pipe.unet)
    handle = apply_raunet(pipe)
    log, hooks = _switch_log(pipe, layout)  # on the modules RAU-Net installed
    try:
        for steps, strength in runs:
            log.clear()
            pipe(
                prompt="a cat", image=image, strength=strength, num_inference_steps=steps, guidance_scale=5.0,
                generator=torch.Generator().manual_seed(0), output_type="pt", **size,
            )  # fmt: skip
            steps_run = int(steps * strength)
            assert len(log) == steps_run == pipe._num_timesteps  # batched CFG: one UNet call per step
            family = "sd" if name == "tiny-sd" else "sdxl"
            assert [tuple(x) for x in log] == _hidiffusion_switches(family, len(log), steps_run), strength
            assert sum(conv or pool for conv, pool in log) == int(0.4 * steps_run)  # sd at 0.7 over 50: 14
    finally:
        for h in hooks:
            h.remove()
        handle.remove()

