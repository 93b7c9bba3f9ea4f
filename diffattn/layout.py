"""Where the token grid sits in one attention call's sequence.

`TokenLayout` is what the denoiser's pre-forward hook records per call (the grid, the denoiser's own
token stream, the text it received); `ModuleRole` is what an attention module attends over, fixed at
install time from the block it sits in; `TokenLayout.split` puts the two together with the sequence
length of one attention call into a `TokenSplit`, or says why it cannot.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch

TextPosition = Literal["none", "prefix", "suffix"]
RoleKind = Literal["self", "temporal"]


class LayoutError(ValueError):
    """The denoiser call's inputs do not give a token grid (e.g. position ids that are no grid)."""


@dataclasses.dataclass(frozen=True)
class ModuleRole:
    """What one patched attention module attends over, chosen at install time.

    kind: ``self`` = the (image, video or audio) token grid, alone or joint with dense tokens (text,
        references, registers) in one sequence; ``temporal`` = the frames of one spatial position
        (motion modules): a 1-D grid of ``frames`` tokens.
    level: resolution level of a UNet block: its grid is the latent grid ceil-halved ``level`` times.
    grid_only: the module attends over the target grid's tokens alone (a per-mode block of a model
        whose latent stream also packs reference images), not the whole latent stream.
    """

    kind: RoleKind = "self"
    level: int = 0
    grid_only: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("self", "temporal"):
            raise ValueError(f"role kind {self.kind!r} is not 'self' or 'temporal'")
        if self.level < 0:
            raise ValueError(f"role level {self.level} must be >= 0")


SELF = ModuleRole()


@dataclasses.dataclass(frozen=True)
class TokenSplit:
    """One attention sequence of ``S`` tokens: the grid's tokens ``image`` (a contiguous range, in
    frames-rows-columns order) and every other token (text, references, registers, in ``dense``), which
    attend and are attended densely."""

    grid: tuple[int, ...]
    image: slice
    seq_len: int
    #: (position, count) of the tokens outside the latent stream when the call showed them as one piece
    #: before or after it (what later single-stream modules of the same call expect), else None
    joint: tuple[TextPosition, int] | None = None
    #: reference-image grids of this sequence (``(rows, grid)``, in sequence order): their queries attend their
    #: own grid's neighbourhood plus every other token densely; for the queries of ``grid`` they are dense keys
    refs: tuple[tuple[slice, tuple[int, ...]], ...] = ()

    @property
    def dense(self) -> tuple[slice, ...]:
        """The ranges outside ``image`` (dense keys of its queries: text, references, registers), in sequence
        order (empty for an image-only call)."""
        return self.outside(self.image)

    @property
    def dense_queries(self) -> tuple[slice, ...]:
        """The ranges outside ``image`` and every reference grid: tokens whose queries attend every key."""
        return self.outside(self.image, *(rows for rows, _ in self.refs))

    def outside(self, *rows: slice) -> tuple[slice, ...]:
        """The ranges outside the disjoint ``rows`` (e.g. the dense keys of a reference grid's queries), in
        sequence order."""
        return _complement(rows, self.seq_len)

    @property
    def dense_len(self) -> int:
        return self.seq_len - (self.image.stop - self.image.start)


def _complement(ranges: tuple[slice, ...], length: int) -> tuple[slice, ...]:
    """The non-empty ranges of ``[0, length)`` outside the disjoint ``ranges``, in order."""
    out, at = [], 0
    for r in sorted(ranges, key=lambda r: r.start):
        if r.start > at:
            out.append(slice(at, r.start))
        at = max(at, r.stop)
    if at < length:
        out.append(slice(at, length))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Token layout of one denoiser call, recorded by the pre-forward hook.

    grid: token grid at the finest level, ``(L,)``, ``(H, W)`` or ``(F, H, W)``.
    stream_len: tokens of the denoiser's own latent stream, the grid plus extras packed with it
        (reference-image tokens of edit models, a prepended global token); None = just the grid.
    grid_offset: where the grid starts inside that stream.
    text_len: text tokens the denoiser received (``encoder_hidden_states.shape[1]``), 0 if none.
    text_position: where dense tokens sit in a joint sequence when the call itself does not show it
        (single-stream blocks concatenate outside the attention processor).
    frames: frames of a video UNet, the grid of its temporal attention.
    multiscale: a UNet, whose blocks may run below their nominal level (HiDiffusion's RAU-Net
        downsamples early): a spatial sequence shorter than its level's grid is read as the deepest
        ceil-halving of that grid with exactly as many tokens.
    refs: reference-image grids packed in the stream (edit models: FLUX Kontext, FLUX.2, Qwen-Image-Edit), as
        ``(offset in the stream, grid)`` with as many axes as ``grid``; tokens of the stream outside the grid and
        the refs stay dense extras.
    """

    grid: tuple[int, ...]
    stream_len: int | None = None
    grid_offset: int = 0
    text_len: int = 0
    text_position: TextPosition = "none"
    frames: int = 1
    multiscale: bool = False
    refs: tuple[tuple[int, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        if not self.grid or any(int(g) < 1 for g in self.grid):
            raise LayoutError(f"token grid {self.grid} must have 1-3 positive axes")
        n = math.prod(self.grid)
        if self.stream_len is not None and not 0 <= self.grid_offset <= self.stream_len - n:
            raise LayoutError(
                f"grid {self.grid} ({n} tokens) at offset {self.grid_offset} does not fit a stream of "
                f"{self.stream_len} tokens"
            )
        spans = [(self.grid_offset, self.grid_offset + n)]
        for offset, grid in self.refs:
            size = math.prod(grid)
            if len(grid) != len(self.grid) or any(int(g) < 1 for g in grid):
                raise LayoutError(f"reference grid {grid} must have the {len(self.grid)} positive axes of {self.grid}")
            if self.stream_len is None or not 0 <= offset <= self.stream_len - size:
                raise LayoutError(f"reference grid {grid} at {offset} does not fit a stream of {self.stream_len}")
            spans.append((offset, offset + size))
        spans.sort()
        if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
            raise LayoutError(f"the grid and reference grids overlap in the stream: {spans}")

    def level_grid(self, role: ModuleRole = SELF) -> tuple[int, ...]:
        """The grid a module of ``role`` attends over."""
        if role.kind == "temporal":
            return (self.frames,)
        grid = self.grid
        for _ in range(role.level):
            grid = tuple((g + 1) // 2 for g in grid)
        return grid

    def split(
        self,
        seq_len: int,
        role: ModuleRole = SELF,
        segments: tuple[int, ...] | None = None,
        observed: tuple[TextPosition, int] | None = None,
    ) -> TokenSplit | str:
        """Where the grid sits in a sequence of ``seq_len`` tokens, or the reason it cannot be placed.

        segments: lengths of the pieces the processor concatenated into this sequence (e.g. text
            then image), when it did so: the piece as long as the latent stream is the image.
        observed: ``(position, count)`` of dense tokens an earlier module of this call showed, for
            single-stream blocks that receive the sequence already concatenated.
        """
        grid = self.level_grid(role)
        n = math.prod(grid)
        top = role.kind == "self" and role.level == 0 and not role.grid_only
        stream = self.stream_len if top and self.stream_len is not None else n
        offset = self.grid_offset if top else 0
        what = f"the grid {grid} ({n} tokens" + (f" in a stream of {stream})" if stream != n else ")")
        refs = self.refs if top else ()

        def placed(base: int, joint: tuple[TextPosition, int] | None = None) -> TokenSplit:
            """The split with the stream starting at row ``base``."""
            at = tuple((slice(base + o, base + o + math.prod(g)), g) for o, g in refs)
            return TokenSplit(grid, slice(base + offset, base + offset + n), seq_len, joint, at)

        if seq_len == stream:
            return placed(0)
        if refs and seq_len == sum(math.prod(g) for _, g in refs) and _contiguous(refs):
            # the references alone (FLUX.2's KV extract mode: reference queries attend the references only)
            first = refs[0][0]
            at = tuple((slice(o - first, o - first + math.prod(g)), g) for o, g in refs)
            return TokenSplit(at[0][1], at[0][0], seq_len, None, at[1:])
        if seq_len < stream:
            deeper = grid
            while self.multiscale and role.kind == "self" and math.prod(deeper) > seq_len:
                deeper = tuple((g + 1) // 2 for g in deeper)
            if self.multiscale and role.kind == "self" and math.prod(deeper) == seq_len:
                return TokenSplit(deeper, slice(0, seq_len), seq_len)
            return f"sequence length {seq_len} is shorter than {what}"
        if segments is not None and sum(segments) == seq_len:
            at = [i for i, s in enumerate(segments) if s == stream]
            if not at and refs:  # the stream in consecutive pieces (its references and its target joined apart)
                at = [i for i in range(len(segments)) if _sums_to(segments[i:], stream)]
            if len(at) != 1:
                return (
                    f"the sequence concatenates pieces of {list(segments)} tokens; "
                    f"{'none' if not at else 'more than one'} is {what}"
                )
            before = sum(segments[: at[0]])
            after = seq_len - before - stream
            return placed(before, None if before and after else ("prefix" if before else "suffix", before + after))
        extra = seq_len - stream
        position, count = observed if observed is not None else (self.text_position, self.text_len)
        if position == "none" or extra != count:
            return (
                f"sequence length {seq_len} is neither {what} nor it plus the {count} dense "
                f"{'text ' if observed is None else ''}tokens expected here"
            )
        return placed(extra if position == "prefix" else 0)


def _contiguous(refs: tuple[tuple[int, tuple[int, ...]], ...]) -> bool:
    """Whether the reference grids follow each other in the stream with nothing between them."""
    return all(o + math.prod(g) == o2 for (o, g), (o2, _) in zip(refs, refs[1:]))


def _sums_to(pieces: tuple[int, ...], total: int) -> bool:
    """Whether the first of ``pieces`` (at least two) add up to exactly ``total``."""
    acc = 0
    for i, piece in enumerate(pieces):
        acc += piece
        if acc >= total:
            return acc == total and i > 0
    return False


def grid_from_ids(ids: torch.Tensor, spatial: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """``(grid, grid_len)`` of position ids ``[S, K]`` (or ``[B, S, K]``, batch-equal) whose columns
    ``spatial`` hold each token's (frame,) row, column.

    The grid is the leading run of tokens that share the other columns (e.g. FLUX Kontext's image
    index), and must be a row-major mesh of consecutive integers at any offset; tokens after it are
    extras (reference images). A LayoutError says why otherwise.
    """
    ids = _batch_equal(ids)
    if not bool((ids == ids.round()).all()):
        raise LayoutError("position ids are not integers (scaled or interpolated positions)")
    others = [c for c in range(ids.shape[1]) if c not in spatial]
    same = (ids[:, others] == ids[:1, others]).all(dim=1) if others else torch.ones(len(ids), dtype=torch.bool)
    run = int(same.long().cumprod(0).sum())
    lead = ids[:run][:, list(spatial)].long()
    grid = _mesh(lead)
    if grid is None:
        span = tuple(int(x) for x in lead.max(0).values - lead.min(0).values + 1)
        raise LayoutError(
            f"position ids of the first {run} tokens do not form a row-major grid of consecutive integers "
            f"(span {span}, {math.prod(span)} cells)"
        )
    return grid, run


@dataclasses.dataclass(frozen=True)
class IdGrids:
    """The grids of position ids (`grids_from_ids`): the target grid at token ``offset``, and the reference grids
    ``(offset, grid)``; tokens in neither are dense extras."""

    grid: tuple[int, ...]
    offset: int
    refs: tuple[tuple[int, tuple[int, ...]], ...]


def grids_from_ids(ids: torch.Tensor, spatial: tuple[int, ...]) -> IdGrids:
    """The target grid and the reference grids of position ids ``[S, K]`` (or ``[B, S, K]``, batch-equal) whose
    columns ``spatial`` hold each token's (frame,) row, column.

    The ids are cut into runs: a run ends where the other columns change (FLUX Kontext's image index, FLUX.2's
    ``t``) or where the position does not move forward in row-major order (a new image restarting at its top
    left). When every run is a row-major mesh of consecutive integers, and runs that share the other columns
    start at the same corner, each run is a grid: the target is the one whose other columns are smallest (FLUX
    pipelines give the target t = 0 and references t >= 1), the last one on a tie (FLUX.2's KV layout packs
    the references ahead of the target, at the same t); the others are reference grids. Otherwise the
    `grid_from_ids` rule holds: the leading run of equal other columns is the grid, the rest dense extras.
    """
    flat = _batch_equal(ids)
    if not bool((flat == flat.round()).all()):
        raise LayoutError("position ids are not integers (scaled or interpolated positions)")
    others = [c for c in range(flat.shape[1]) if c not in spatial]
    pos = flat[:, list(spatial)].long()
    key = torch.zeros(len(flat), dtype=torch.float64)
    for c in range(pos.shape[1]):  # row-major rank of each position (exact in float64 for any real grid)
        span = float(pos[:, c].max() - pos[:, c].min() + 1)
        key = key * span + (pos[:, c] - pos[:, c].min()).double()
    same = (flat[1:, others] == flat[:-1, others]).all(dim=1) if others else torch.ones(len(flat) - 1, dtype=torch.bool)
    cuts = [0, *(((~same) | (key[1:] <= key[:-1])).nonzero().flatten() + 1).tolist(), len(flat)]
    runs = []  # (start, grid or None, other columns, corner)
    for start, stop in zip(cuts, cuts[1:]):
        run = pos[start:stop]
        runs.append((start, _mesh(run), tuple(flat[start, others].tolist()), tuple(run.min(0).values.tolist())))
    corners: dict[tuple, set] = {}
    for _, _, other, corner in runs:
        corners.setdefault(other, set()).add(corner)
    if len(runs) == 1 or any(g is None for _, g, _, _ in runs) or any(len(c) > 1 for c in corners.values()):
        grid, _ = grid_from_ids(flat, spatial)
        return IdGrids(grid, 0, ())
    target = min(range(len(runs)), key=lambda i: (runs[i][2], -i))
    start, grid, _, _ = runs[target]
    assert grid is not None
    refs = tuple((s, g) for i, (s, g, _, _) in enumerate(runs) if i != target and g is not None and len(g) == len(grid))
    return IdGrids(grid, start, refs)


def _batch_equal(ids: torch.Tensor) -> torch.Tensor:
    if ids.dim() == 3:
        if ids.shape[0] > 1 and not bool((ids == ids[:1]).all()):
            raise LayoutError("position ids differ across the batch")
        ids = ids[0]
    if ids.dim() != 2 or ids.shape[0] == 0:
        raise LayoutError(f"position ids of shape {tuple(ids.shape)} are not [S, K]")
    return ids.detach().to("cpu", torch.float64)


def _mesh(pos: torch.Tensor) -> tuple[int, ...] | None:
    """The grid of positions ``[n, axes]`` if they are a row-major mesh of consecutive integers, else None."""
    lo, hi = pos.min(0).values, pos.max(0).values
    grid = tuple(int(x) for x in hi - lo + 1)
    if math.prod(grid) != len(pos):
        return None
    mesh = torch.stack(torch.meshgrid(*(torch.arange(g) for g in grid), indexing="ij"), -1).reshape(-1, len(grid))
    return grid if torch.equal(pos - lo, mesh) else None
