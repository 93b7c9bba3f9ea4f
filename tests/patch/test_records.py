"""Undo records other changes join a handle with (RAU-Net swaps convolutions): bit-exact removal,
rollback of a failed extension, and pickles of the unpatched object."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import diffattn
from diffattn.patch import SetAttr, SwapSubmodule


class _Doubled(torch.nn.Module):
    """Stands in for a swapped convolution: the original, times two."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 2 * self.inner(x)


@pytest.fixture
def unet_call(pipelines):
    pipe = pipelines.pipe("tiny-sd")
    unet = pipe.unet
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, unet.config.in_channels, 16, 16, generator=g)
    text = torch.randn(1, 16, unet.config.cross_attention_dim, generator=g)

    def call(model=unet):
        with torch.no_grad():
            return model(sample, 500, encoder_hidden_states=text).sample

    return pipe, call


def test_swapped_submodule_joins_the_handle_and_leaves_bit_exact(unet_call):
    pipe, call = unet_call
    unet = pipe.unet
    base, conv_in = call(), unet.conv_in
    handle = diffattn.apply_attention(pipe, "gna", window=3)
    sparse = call()
    handle.extend([SwapSubmodule(unet, "conv_in", _Doubled(conv_in))])
    assert isinstance(unet.conv_in, _Doubled)
    swapped = call()
    assert not torch.equal(swapped, sparse)
    blob = pickle.dumps(unet)
    assert b"diffattn" not in blob and b"_Doubled" not in blob
    for clone in (pickle.loads(blob), copy.deepcopy(unet)):
        assert type(clone.conv_in) is torch.nn.Conv2d and "__reduce_ex__" not in clone.__dict__
        assert torch.equal(call(clone), base)
    handle.remove()
    assert unet.conv_in is conv_in and "__reduce_ex__" not in unet.__dict__
    assert torch.equal(call(), base)


def test_failed_extension_rolls_back_only_itself(unet_call):
    pipe, call = unet_call
    unet = pipe.unet
    conv_in, conv_out = unet.conv_in, unet.conv_out
    with diffattn.attention(pipe, "gna", window=3) as handle:
        sparse = call()
        bad = [SwapSubmodule(unet, "conv_in", _Doubled(conv_in)), SwapSubmodule(unet, "no_such_conv", conv_out)]
        with pytest.raises(KeyError, match="no_such_conv"):
            handle.extend(bad)
        assert unet.conv_in is conv_in and torch.equal(call(), sparse)
        with pytest.raises(TypeError, match="'conv_out' is a parameter, buffer or submodule"):
            handle.extend([SetAttr(unet, "conv_out", None)])
    assert "__reduce_ex__" not in unet.__dict__
