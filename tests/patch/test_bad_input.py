"""Bad input gets a clear error naming the value and the accepted range, and changes nothing."""

from __future__ import annotations

import pytest
import torch

import diffattn
from diffattn.functional import gna
from diffattn.tiny import tiny_output

from ..helpers import random_qkv


def _state(pipe):
    den = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    procs = {n: m.processor for n, m in den.named_modules() if hasattr(m, "set_processor")}
    return procs, len(den._forward_pre_hooks)


BAD_APPLY = [
    # every method's knobs, checked through apply_attention (so the pipeline must stay unchanged)
    pytest.param(("msw",), {"window": 0}, ValueError, r"window=0 must be >= 1", id="msw-window-0"),
    pytest.param(("msw",), {"window": (4, 4, 4)}, ValueError, r"msw window=\(4, 4, 4\) is 3-D", id="msw-3d-on-image"),
    pytest.param(("msw",), {"seed": "x"}, TypeError, r"seed='x' must be an int", id="msw-seed-type"),
    pytest.param(("proxy",), {"window": -1}, ValueError, r"window=-1 must be >= 1", id="proxy-window-negative"),
    pytest.param(("proxy",), {"proxy": "median"}, ValueError, r"proxy='median' is not one of", id="proxy-kind"),
    pytest.param(("proxy",), {"window": (2, 2, 2)}, ValueError, r"is 3-D but this model's", id="proxy-3d-on-image"),
    pytest.param(("agent",), {"ratio": 0}, ValueError, r"ratio=0 must be a number in \(0, 1\]", id="agent-ratio-0"),
    pytest.param(("agent",), {"ratio": 1.5}, ValueError, r"ratio=1.5 must be a number in \(0, 1\]", id="agent-ratio"),
    pytest.param(("agent",), {"scale_power": 3.0}, ValueError, r"scale_power=3.0 .* \(0, 2\]", id="agent-power"),
    pytest.param(("agent",), {"shortcut": -1.0}, ValueError, r"shortcut=-1.0 must be .* >= 0", id="agent-shortcut"),
    pytest.param(("agent",), {"agents": 0}, ValueError, r"agents=0 must be >= 1", id="agent-agents-0"),
    pytest.param(("gna",), {"window": 0}, ValueError, r"window=0 must be >= 1", id="window-0"),
    pytest.param(("gna",), {"window": -3}, ValueError, r"window=-3 must be >= 1", id="window-negative"),
    pytest.param(("gna",), {"window": 2.5}, TypeError, r"window=2.5 must hold ints", id="window-float"),
    pytest.param(("gna",), {"window": 4, "stride": 5}, ValueError, r"stride=5 exceeds window=4", id="stride-gt-window"),
    pytest.param(
        ("gna",), {"window": (4, 4, 4)}, ValueError, r"3-D but this model's token grid is 2-D", id="3d-on-image"
    ),
    pytest.param(("gna",), {"preset": False}, TypeError, r"needs knob\(s\) \['window'\]", id="missing-window"),
    pytest.param(("gna",), {"preset": "no"}, TypeError, r"preset='no' must be True or False", id="preset-type"),
    pytest.param(("gna",), {"window": 4, "kernel": 3}, TypeError, r"unknown knob\(s\) \['kernel'\]", id="unknown-knob"),
    pytest.param(
        ("nope",),
        {},
        ValueError,
        r"unknown attention method 'nope'; known methods: agent, dense, freeswim, gna(, \w+)*",
        id="unknown-method",
    ),
    pytest.param(
        ("gna",), {"window": 4, "layers": "^no_such_layer"}, ValueError, r"matches no self-attention", id="layers-none"
    ),
    pytest.param(
        ("gna",), {"window": 4, "layers": "("}, ValueError, r"not a valid regular expression", id="layers-bad-regex"
    ),
    pytest.param(("gna",), {"window": 4, "steps": (3, 1)}, ValueError, r"need 0 <= start < end", id="steps-empty"),
    pytest.param(("gna",), {"window": 4, "steps": (-1, 2)}, ValueError, r"need 0 <= start < end", id="steps-negative"),
    pytest.param(("gna",), {"window": 4, "steps": "all"}, TypeError, r"steps='all' must be", id="steps-type"),
    pytest.param(
        ("gna",), {"window": 4, "steps": (0.5, 0.2)}, ValueError, r"0.0 <= start < end <= 1.0", id="steps-frac-empty"
    ),
    pytest.param(
        ("gna",), {"window": 4, "steps": (-0.1, 0.5)}, ValueError, r"0.0 <= start < end <= 1.0", id="steps-frac-neg"
    ),
    pytest.param(
        ("gna",), {"window": 4, "steps": (0, 1.5)}, ValueError, r"steps=\(0, 1.5\) as fractions", id="steps-frac-gt1"
    ),
    pytest.param(
        ("gna",),
        {"window": 4, "steps": (float("nan"), 0.5)},
        ValueError,
        r"0.0 <= start < end <= 1.0",
        id="steps-frac-nan",
    ),
    pytest.param(
        ("gna",), {"window": 4, "steps": (0.0, 0.5, 1.0)}, TypeError, r"floats in \[0, 1\]", id="steps-3-values"
    ),
    pytest.param(
        ("gna",), {"window": 4, "backend": "cuda"}, ValueError, r"backend='cuda' is not one of", id="backend-unknown"
    ),
    pytest.param(
        ("gna",),
        {"window": 4, "backend": "triton"},
        ValueError,
        r"backend='triton' cannot run",
        id="backend-triton-cpu",
    ),
]


@pytest.mark.parametrize("args,kwargs,exc,match", BAD_APPLY)
def test_failed_apply_raises_and_changes_nothing(sd, args, kwargs, exc, match):
    pipe, base = sd
    before = _state(pipe)
    with pytest.raises(exc, match=match):
        diffattn.apply_attention(pipe, *args, **kwargs)
    after = _state(pipe)
    assert before[1] == after[1]
    assert all(before[0][k] is after[0][k] for k in before[0])
    assert torch.equal(tiny_output(pipe, "tiny-sd"), base)


@pytest.mark.parametrize("method", ["gna", "msw", "proxy"])
def test_2d_window_on_video_model_is_rejected(wan, method):
    pipe, base = wan
    with pytest.raises(ValueError, match=r"2-D but this model's token grid is 3-D \(frames, rows, columns\)"):
        diffattn.apply_attention(pipe, method, window=(4, 4))
    assert torch.equal(tiny_output(pipe, "tiny-wan"), base)


def test_steps_beyond_schedule_is_reported(sd):
    pipe, base = sd
    with diffattn.attention(pipe, "gna", window=3, steps=(5, 9)):
        with pytest.raises(ValueError, match=r"steps=5..9 lies outside the schedule of 2 steps"):
            tiny_output(pipe, "tiny-sd")
    assert torch.equal(tiny_output(pipe, "tiny-sd"), base)


def test_dilation_too_large_for_a_grid_is_reported_at_that_call(sd):
    """Grids are only known per call: at the 16x16 level, window 3 x dilation 8 cannot fit."""
    pipe, base = sd
    with diffattn.attention(pipe, "gna", window=3, dilation=8):
        with pytest.raises(ValueError, match=r"window 3 x dilation 8 = 24 exceeds axis 0 of the grid \(16, 16\)"):
            tiny_output(pipe, "tiny-sd")
    assert torch.equal(tiny_output(pipe, "tiny-sd"), base)


@pytest.mark.parametrize(
    "target", [torch.nn.Linear(2, 2), object(), "tiny-sd"], ids=["linear-module", "object", "string"]
)
def test_unsupported_model(target):
    with pytest.raises(TypeError, match=r"unsupported denoiser Linear: .*; supported: |cannot patch a"):
        diffattn.apply_attention(target, "gna", window=3)


def test_bare_denoiser_can_be_patched(sd):
    pipe, base = sd
    with diffattn.attention(pipe.unet, "gna", window=3) as h:
        out = tiny_output(pipe, "tiny-sd")
    assert h.sparse_calls > 0 and not torch.equal(out, base)
    with pytest.raises(ValueError, match="steps= needs a pipeline"):
        diffattn.apply_attention(pipe.unet, "gna", window=3, steps=(0, 1))


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: (*random_qkv(12, batch=1)[:2], torch.randn(1, 11, 2, 8)), ValueError, r"share one shape"),
        (
            lambda: (*random_qkv(12, batch=1)[:2], torch.randn(1, 12, 2, 8, dtype=torch.float64)),
            TypeError,
            r"share one dtype",
        ),
        (lambda: tuple(t[0] for t in random_qkv(12, batch=1)), ValueError, r"must be \[B, S, H, D\]"),
        (lambda: tuple(t.long() for t in random_qkv(12, batch=1)), TypeError, r"floating point"),
    ],
    ids=["shape-mismatch", "dtype-mismatch", "3d-tensor", "int-dtype"],
)
def test_functional_rejects_bad_tensors(make, exc, match):
    q, k, v = make()
    with pytest.raises(exc, match=match):
        gna(q, k, v, (3, 4), 2)


@pytest.mark.parametrize(
    "grid,window,stride,dilation,match",
    [
        ((3, 5), 2, 1, 1, r"grid=\(3, 5\) has 15 tokens but q has S=12"),
        ((3, 4), (2, 2, 2), 1, 1, r"do not match the 2-D grid"),
        ((3, 4), 2, 1, (1, 3), r"window 2 x dilation 3 = 6 exceeds axis 1"),
        ((3, 4), 2, 3, 1, r"stride=3 exceeds window=2"),
        ((12,), 0, 1, 1, r"window=0 must be >= 1"),
    ],
    ids=["grid-size", "grid-ndim", "dilation-too-big", "stride-gt-window", "window-0"],
)
def test_functional_rejects_bad_config(grid, window, stride, dilation, match):
    q, k, v = random_qkv(12, batch=1)
    with pytest.raises(ValueError, match=match):
        gna(q, k, v, grid, window, stride, dilation)


def test_functional_non_finite_propagates_and_check_finite_names_it():
    q, k, v = random_qkv(12, batch=1)
    q[0, 3, 0, 0] = float("nan")
    out = gna(q, k, v, (3, 4), 2)  # no pass over the data by default: propagated, never hidden or hung
    assert torch.isnan(out[0, 3, 0]).all() and torch.isfinite(out[0, :, 1]).all()  # the NaN's head only
    with pytest.raises(ValueError, match=r"gna: q contains NaN or Inf \(check_finite=True\)"):
        gna(q, k, v, (3, 4), 2, check_finite=True)
