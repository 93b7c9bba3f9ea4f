"""`TokenLayout`: where the image grid and the text tokens sit in one attention call's sequence."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

TextPosition = Literal["none", "prefix", "suffix"]


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Token layout of one denoiser call, recorded by the pre-forward hook.

    grid: image token grid at the finest attention level, ``(H, W)`` or ``(F, H, W)``.
    text_len: text tokens that joint-attention modules append to the image tokens.
    text_position: where those text tokens sit in a joint sequence.
    multiscale: UNets attend at several levels; level ``l`` has the grid ceil-halved ``l`` times.
    """

    grid: tuple[int, ...]
    text_len: int = 0
    text_position: TextPosition = "none"
    multiscale: bool = False

    def image_grid(self, num_image_tokens: int) -> tuple[int, ...] | None:
        """The grid holding ``num_image_tokens`` tokens, or None if no level matches."""
        grid = self.grid
        while True:
            if math.prod(grid) == num_image_tokens:
                return grid
            if not self.multiscale or all(g == 1 for g in grid):
                return None
            grid = tuple((g + 1) // 2 for g in grid)

    def split(self, seq_len: int) -> tuple[tuple[int, ...], int, int] | None:
        """For a self-attention sequence of ``seq_len`` tokens: ``(grid, image_start, text_len)``.

        ``text_len`` is 0 for image-only modules. None when the length matches no known layout
        (another plugin changed the token count): the caller then falls back to dense attention.
        """
        grid = self.image_grid(seq_len)
        if grid is not None:
            return grid, 0, 0
        if self.text_len and self.text_position != "none":
            grid = self.image_grid(seq_len - self.text_len)
            if grid is not None:
                start = self.text_len if self.text_position == "prefix" else 0
                return grid, start, self.text_len
        return None
