"""TokenLayout.split: where the grid sits in one call's sequence, by module role, never by token count."""

from __future__ import annotations

import pytest
import torch

from diffattn.layout import LayoutError, ModuleRole, TokenLayout, grid_from_ids, grids_from_ids


@pytest.mark.parametrize("level,expected", [(0, (15, 17)), (1, (8, 9)), (2, (4, 5)), (3, (2, 3)), (5, (1, 1))])
def test_unet_levels_are_ceil_halved(level, expected):
    layout = TokenLayout(grid=(15, 17))
    split = layout.split(expected[0] * expected[1], ModuleRole("self", level=level))
    assert split.grid == expected and split.image == slice(0, expected[0] * expected[1]) and not split.dense


def test_a_level_is_not_guessed_from_the_token_count():
    """72 tokens are level 1 of a 15x17 latent; a level-2 module seeing 72 tokens falls back with a reason."""
    assert isinstance(TokenLayout(grid=(15, 17)).split(72, ModuleRole("self", level=2)), str)


def test_temporal_attention_is_1d_over_frames():
    """4 frames must not match a 2x2 spatial level: the temporal role gives a 1-D grid of frames."""
    layout = TokenLayout(grid=(4, 4), frames=4)
    assert layout.split(4, ModuleRole("temporal")).grid == (4,)
    assert isinstance(layout.split(16, ModuleRole("temporal")), str)


@pytest.mark.parametrize(
    "position,seq,image,dense",
    [
        ("prefix", 96 + 16, slice(16, 112), (slice(0, 16),)),
        ("suffix", 96 + 16, slice(0, 96), (slice(96, 112),)),
        ("prefix", 96, slice(0, 96), ()),  # an image-only module of a joint model
    ],
)
def test_joint_sequences_split_into_image_and_dense_tokens(position, seq, image, dense):
    split = TokenLayout(grid=(8, 12), text_len=16, text_position=position).split(seq)
    assert split.grid == (8, 12) and split.image == image and split.dense == dense


@pytest.mark.parametrize("seq", [96 + 15, 95, 96 + 17])
def test_unexpected_length_gives_a_reason(seq):
    reason = TokenLayout(grid=(8, 12), text_len=16, text_position="suffix").split(seq)
    assert isinstance(reason, str) and str(seq) in reason


def test_concatenated_pieces_place_the_stream_and_its_extras():
    """[text 7, target 3x5 + reference 9]: the piece as long as the latent stream is the image; the
    reference tokens after the grid and the text before it are dense."""
    layout = TokenLayout(grid=(3, 5), stream_len=24, text_len=7)
    split = layout.split(31, segments=(7, 24))
    assert split.image == slice(7, 22) and split.dense == (slice(0, 7), slice(22, 31))
    assert split.joint == ("prefix", 7)  # what single-stream modules of this call expect outside the stream
    assert isinstance(layout.split(31, segments=(24, 7)).image, slice)
    assert isinstance(layout.split(31, segments=(10, 21)), str)


def test_observed_placement_serves_single_stream_modules():
    layout = TokenLayout(grid=(4, 4), text_len=5, text_position="suffix")
    joint = layout.split(21, segments=(5, 16)).joint
    assert joint == ("prefix", 5)
    assert layout.split(21, observed=joint).image == slice(5, 21)


def test_prefixed_stream_token():
    """Audio DiTs prepend a global token to the latent stream: the grid starts after it."""
    split = TokenLayout(grid=(16,), stream_len=17, grid_offset=1).split(17)
    assert split.image == slice(1, 17) and split.dense == (slice(0, 1),)


def _mesh(rows: int, cols: int, row0: int = 0, col0: int = 0, index: int = 0) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(rows) + row0, torch.arange(cols) + col0, indexing="ij")
    return torch.stack([torch.full_like(r, index), r, c], -1).reshape(-1, 3).float()


@pytest.mark.parametrize("row0,col0", [(0, 0), (5, 3)], ids=["zero-based", "offset"])
def test_ids_grid_any_offset(row0, col0):
    assert grid_from_ids(_mesh(3, 7, row0, col0), (1, 2)) == ((3, 7), 21)


def test_ids_grid_with_reference_tokens_after_it():
    ids = torch.cat([_mesh(3, 4), _mesh(2, 2, index=1)])
    assert grid_from_ids(ids, (1, 2)) == ((3, 4), 12)


@pytest.mark.parametrize(
    "ids,why",
    [
        (_mesh(3, 4)[torch.randperm(12, generator=torch.Generator().manual_seed(0))], "row-major"),
        (_mesh(3, 4) * 0.5, "not integers"),
        (torch.cat([_mesh(2, 4), _mesh(1, 3, row0=2)]), "row-major"),
    ],
    ids=["shuffled", "scaled", "ragged"],
)
def test_ids_that_are_no_grid_give_a_reason(ids, why):
    with pytest.raises(LayoutError, match=why):
        grid_from_ids(ids, (1, 2))


def test_unet_blocks_below_their_level_read_the_deeper_grid():
    """RAU-Net downsamples early: a UNet block may see its level's grid ceil-halved again (never a DiT)."""
    unet = TokenLayout((15, 17), multiscale=True)
    split = unet.split(20, ModuleRole("self", level=1))  # level 1 is 8x9; the block ran at 4x5
    assert not isinstance(split, str) and split.grid == (4, 5) and split.image == slice(0, 20)
    assert isinstance(unet.split(30, ModuleRole("self", level=1)), str)  # 30 is no ceil-halving of 8x9
    assert isinstance(TokenLayout((15, 17)).split(72), str)  # a DiT's grid is never guessed from a count


def test_grid_only_modules_see_the_grid_without_the_stream_extras():
    """FLUX.3 per-mode image blocks attend the target grid alone; its joint blocks see text + the
    stream (grid + reference tokens); a grid-only module given the whole stream falls back."""
    layout = TokenLayout(grid=(4, 5), stream_len=26, text_len=12, text_position="prefix")
    alone = layout.split(20, ModuleRole(grid_only=True))
    assert alone.image == slice(0, 20) and alone.dense == ()
    joint = layout.split(38)
    assert joint.image == slice(12, 32) and joint.dense == (slice(0, 12), slice(32, 38))
    assert isinstance(layout.split(26, ModuleRole(grid_only=True)), str)
    assert isinstance(layout.split(20), str)  # a whole-stream module never takes the bare grid


# --------------------------------------------------------------------------- reference grids (issue 23)


def _ids4(rows: int, cols: int, t: int = 0) -> torch.Tensor:
    """FLUX.2 style ids ``(t, h, w, l)`` of a rows x cols image at time ``t``."""
    return torch.cartesian_prod(torch.tensor([t]), torch.arange(rows), torch.arange(cols), torch.tensor([0])).float()


@pytest.mark.parametrize(
    "parts,target,refs",
    [
        # FLUX.2 KV (diffusers' own test config): a 4x1 reference ahead of the 4x4 target, both at t = 0
        ([(4, 1, 0), (4, 4, 0)], (4, (4, 4)), ((0, (4, 1)),)),
        # FLUX.2 pipeline: the target at t = 0, references at t = 10, 20 after it
        ([(4, 4, 0), (2, 3, 10), (3, 2, 20)], (0, (4, 4)), ((16, (2, 3)), (22, (3, 2)))),
        # FLUX.2 KV pipeline: references at t = 10, 20 ahead of the target at t = 0
        ([(2, 3, 10), (3, 2, 20), (4, 4, 0)], (12, (4, 4)), ((0, (2, 3)), (6, (3, 2)))),
        # one image: no references
        ([(3, 5, 0)], (0, (3, 5)), ()),
    ],
    ids=["kv-refs-ahead-same-t", "refs-after", "refs-ahead-own-t", "single"],
)
def test_grids_from_ids_find_the_target_and_the_reference_grids(parts, target, refs):
    ids = torch.cat([_ids4(r, c, t) for r, c, t in parts])
    found = grids_from_ids(ids, (1, 2))
    assert (found.offset, found.grid) == target and found.refs == refs
    assert grids_from_ids(ids[None].expand(2, -1, -1), (1, 2)) == found  # batched ids


def test_grids_from_ids_keep_a_reference_that_is_no_grid_dense():
    """A run that is no mesh: the old rule (the leading run of equal t is the grid, the rest dense extras)."""
    ragged = torch.cat([_ids4(2, 4), _ids4(1, 3, t=1)[[0, 2]]])  # the reference skips a column
    found = grids_from_ids(ragged, (1, 2))
    assert (found.offset, found.grid, found.refs) == (0, (2, 4), ())


@pytest.mark.parametrize(
    "ids",
    [
        _ids4(3, 4)[torch.randperm(12, generator=torch.Generator().manual_seed(0))],
        torch.cat([_ids4(3, 4), _ids4(2, 2)[torch.tensor([3, 1, 0, 2])]]),
    ],
    ids=["shuffled", "shuffled-reference-same-t"],
)
def test_grids_from_ids_never_read_shuffled_ids_as_grids(ids):
    with pytest.raises(LayoutError, match="row-major"):
        grids_from_ids(ids, (1, 2))


def test_reference_grids_are_placed_with_the_stream():
    """text 5 + [reference 2x3, target 4x4, reference 3x1]: each reference grid is placed at its rows, whichever
    way the stream is found (the sequence is the stream, a concatenated piece, or text + stream)."""
    layout = TokenLayout(
        grid=(4, 4), stream_len=25, grid_offset=6, text_len=5, text_position="prefix", refs=((0, (2, 3)), (22, (3, 1)))
    )
    for split in (layout.split(30), layout.split(30, segments=(5, 25))):
        assert split.image == slice(11, 27)
        assert split.refs == ((slice(5, 11), (2, 3)), (slice(27, 30), (3, 1)))
        assert split.dense == (slice(0, 11), slice(27, 30))  # the grid's dense keys: text and references
        assert split.dense_queries == (slice(0, 5),)  # only the text attends densely
        assert split.outside(slice(5, 11)) == (slice(0, 5), slice(11, 30))
    stream = layout.split(25)
    assert stream.image == slice(6, 22) and stream.refs[0][0] == slice(0, 6)
    grid_only = layout.split(16, ModuleRole(grid_only=True))
    assert grid_only.refs == ()  # a per-mode block attends the target grid alone


@pytest.mark.parametrize(
    "refs,why",
    [
        (((0, (2, 2)),), "overlap"),  # on top of the grid
        (((20, (3, 3)),), "does not fit"),
        (((16, (4,)),), "axes"),
    ],
    ids=["overlap", "outside", "axes"],
)
def test_bad_reference_grids_are_refused(refs, why):
    with pytest.raises(LayoutError, match=why):
        TokenLayout(grid=(4, 4), stream_len=24, refs=refs)


def test_references_alone_and_a_stream_joined_in_pieces():
    """FLUX.2's KV extract mode: the references attend themselves alone (a sequence of exactly the reference
    tokens, contiguous in the stream), and the text + target queries see the keys joined as [text, references,
    target]: the stream arrives in two consecutive pieces."""
    layout = TokenLayout(
        grid=(4, 4), stream_len=26, grid_offset=10, text_len=48, text_position="prefix",
        refs=((0, (2, 3)), (6, (4, 1))),
    )  # fmt: skip
    alone = layout.split(10)
    assert (alone.grid, alone.image, alone.refs) == ((2, 3), slice(0, 6), ((slice(6, 10), (4, 1)),))
    pieces = layout.split(74, segments=(48, 10, 16))
    assert pieces.image == slice(58, 74) and [r for r, _ in pieces.refs] == [slice(48, 54), slice(54, 58)]
    assert isinstance(layout.split(74, segments=(40, 18, 16)), str)  # no run of pieces is the stream
    gap = TokenLayout(grid=(4, 4), stream_len=27, grid_offset=11, refs=((0, (2, 3)), (7, (4, 1))))
    assert isinstance(gap.split(10), str)  # references with a token between them are not one sequence
