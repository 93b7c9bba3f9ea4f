"""Temporal attention (issue 10): 1-D over the frames of one position, dense by default; with
``temporal_window`` it runs sliding 1-D GNA over frames, exact against dense when the window covers them."""

from __future__ import annotations

import pytest
import torch

import diffattn
from diffattn.tiny.denoisers import build_tiny_model, tiny_forward

HUGE = 10**6
VIDEO = ["UNetMotionModel", "UNet3DConditionModel", "UNetSpatioTemporalConditionModel", "LatteTransformer3DModel"]


def _video(cls: str) -> tuple[torch.nn.Module, dict, int]:
    """A tiny video denoiser, its inputs with several frames, and the frame count."""
    model, inputs = build_tiny_model(cls)
    if cls == "LatteTransformer3DModel":  # its temporal position embedding fixes the frame count
        x = inputs["hidden_states"]
        frames = model.config.video_length
        inputs["hidden_states"] = torch.randn(
            (x.shape[0], x.shape[1], frames, *x.shape[3:]), generator=torch.Generator().manual_seed(0)
        )
        return model, inputs, frames
    frames, g = 4, torch.Generator().manual_seed(0)
    x = inputs["sample"]
    axis = 1 if cls == "UNetSpatioTemporalConditionModel" else 2  # [B, F, C, H, W] vs [B, C, F, H, W]
    shape = list(x.shape)
    shape[axis] = frames
    inputs["sample"] = torch.randn(shape, generator=g)
    if cls == "UNetMotionModel":  # one text embedding per frame
        inputs["encoder_hidden_states"] = inputs["encoder_hidden_states"][:1].repeat(frames, 1, 1)
    return model, inputs, frames


@pytest.mark.parametrize("cls", VIDEO)
def test_temporal_window_runs_1d_gna_over_frames(cls):
    model, inputs, frames = _video(cls)
    assert frames >= 3
    base = tiny_forward(model, inputs)
    with diffattn.attention(model, "gna", window=HUGE, preset=False) as h:  # spatial exactly dense
        spatial_only = tiny_forward(model, inputs)
        assert all(s.kind != "temporal" for s in h.stats().values())  # dense by default: not patched
    torch.testing.assert_close(spatial_only, base, atol=1e-5, rtol=1e-5)
    with diffattn.attention(model, "gna", window=HUGE, preset=False, temporal_window=1) as h:
        out = tiny_forward(model, inputs)
        temporal = {n: s for n, s in h.stats().items() if s.kind == "temporal"}
        table = h.summary()
    assert temporal, h.stats()
    assert all(s.grid == (frames,) and s.sparse > 0 and s.fallback == 0 for s in temporal.values()), temporal
    assert "temporal" in table and f"{frames}" in table and "WARNING" not in table
    assert (out - base).abs().max() > 1e-3  # each frame sees only itself
    with diffattn.attention(model, "gna", window=HUGE, preset=False, temporal_window=frames):
        covered = tiny_forward(model, inputs)
    torch.testing.assert_close(covered, base, atol=1e-5, rtol=1e-5)
    assert torch.equal(tiny_forward(model, inputs), base)  # removed: bit-exact


def test_latte_spatial_attention_is_per_frame():
    """Latte's spatial blocks attend the H x W tokens of one frame: the grid is (H, W), not (F, H, W)."""
    model, inputs, frames = _video("LatteTransformer3DModel")
    with diffattn.attention(model, "gna", window=3, preset=False) as h:
        tiny_forward(model, inputs)
    stats = h.stats()
    assert stats and all(s.sparse > 0 and s.fallback == 0 and len(s.grid) == 2 for s in stats.values()), stats


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "3"], ids=repr)
def test_bad_temporal_window_is_refused_and_leaves_the_model_as_it_was(bad):
    model, inputs, _ = _video("UNetMotionModel")
    base = tiny_forward(model, inputs)
    with pytest.raises(ValueError, match=f"temporal_window={bad!r} must be an int >= 1"):
        diffattn.apply_attention(model, "gna", window=3, preset=False, temporal_window=bad)
    assert torch.equal(tiny_forward(model, inputs), base)


def test_temporal_window_on_a_model_without_temporal_attention():
    model, inputs = build_tiny_model("FluxTransformer2DModel")
    base = tiny_forward(model, inputs)
    with pytest.raises(ValueError, match="FluxTransformer2DModel has no temporal attention"):
        diffattn.apply_attention(model, "gna", window=3, preset=False, temporal_window=2)
    assert torch.equal(tiny_forward(model, inputs), base)
