"""TokenLayout: which grid and text span a sequence length belongs to."""

from __future__ import annotations

import pytest

from diffattn.layout import TokenLayout


@pytest.mark.parametrize(
    "seq,expected", [(255, (15, 17)), (72, (8, 9)), (20, (4, 5)), (6, (2, 3)), (1, (1, 1)), (100, None)]
)
def test_unet_levels_are_ceil_halved(seq, expected):
    layout = TokenLayout(grid=(15, 17), multiscale=True)
    assert layout.image_grid(seq) == expected


@pytest.mark.parametrize(
    "position,seq,expected",
    [
        ("prefix", 96 + 16, ((8, 12), 16, 16)),
        ("suffix", 96 + 16, ((8, 12), 0, 16)),
        ("prefix", 96, ((8, 12), 0, 0)),  # an image-only module of a joint model
        ("suffix", 96 + 15, None),  # token count changed by another plugin -> dense fallback
    ],
)
def test_joint_sequences_split_into_image_and_text(position, seq, expected):
    layout = TokenLayout(grid=(8, 12), text_len=16, text_position=position)
    assert layout.split(seq) == expected


def test_video_grid_is_not_multiscale():
    layout = TokenLayout(grid=(3, 6, 8))
    assert layout.split(144) == ((3, 6, 8), 0, 0)
    assert layout.split(36) is None
