"""diffattn.patch.context_parallel: the Ulysses setting of a processor and the order of a gathered joint sequence.

The expected chunking is simulated with torch's own ``chunk`` / ``tensor_split`` (what diffusers'
sharders call), so these tests check `chunk_sizes` and `gathered_order` against diffusers' rule."""

from __future__ import annotations

import pytest
import torch
from diffusers import ContextParallelConfig
from diffusers.models._modeling_parallel import ParallelConfig

from diffattn.patch.context_parallel import Ulysses, chunk_sizes, gathered_order, ulysses_of


def _sharded(n: int, parts: int, uneven: bool) -> list[torch.Tensor]:
    x = torch.arange(n)
    return list(x.tensor_split(parts) if uneven else x.chunk(parts))


@pytest.mark.parametrize("uneven", [False, True], ids=["chunk", "tensor_split"])
@pytest.mark.parametrize("n,parts", [(0, 2), (1, 2), (7, 2), (16, 2), (15, 4), (9, 3), (63, 4), (5, 5)])
def test_chunk_sizes_match_torch(n, parts, uneven):
    chunks = _sharded(n, parts, uneven)
    sizes = chunk_sizes(n, parts, uneven)
    if len(chunks) < parts:  # torch.chunk gives fewer chunks: a rank would hold nothing
        assert sizes is None
    else:
        assert sizes == [len(c) for c in chunks]


def test_chunk_sizes_fewer_chunks_than_ranks():
    assert len(torch.arange(5).chunk(4)) == 3  # the case chunk_sizes must refuse
    assert chunk_sizes(5, 4, uneven=False) is None
    assert chunk_sizes(5, 4, uneven=True) == [2, 1, 1, 1]


@pytest.mark.parametrize("n,parts", [(-1, 2), (4, 0)], ids=["negative-n", "zero-parts"])
def test_chunk_sizes_rejects_bad_input(n, parts):
    with pytest.raises(ValueError, match="n >= 0 and parts >= 1"):
        chunk_sizes(n, parts, False)


@pytest.mark.parametrize("text_first", [True, False], ids=["txt-img", "img-txt"])
@pytest.mark.parametrize("uneven", [False, True], ids=["chunk", "tensor_split"])
@pytest.mark.parametrize(
    "text_len,image_len,degree",
    [(16, 96, 2), (15, 63, 2), (15, 63, 4), (7, 30, 3), (1, 9, 2), (0, 12, 2), (4, 8, 4)],
    ids=lambda v: str(v),
)
def test_gathered_order_undoes_the_all_to_all(text_len, image_len, text_first, uneven, degree):
    """Build the canonical sequence, shard text and image like diffusers, concatenate the ranks'
    chunks as the all-to-all does; ``gathered[perm]`` must be the canonical sequence again."""
    canonical = torch.arange(text_len + image_len)
    txt, img = (canonical[:text_len], canonical[text_len:]) if text_first else (
        canonical[image_len:],
        canonical[:image_len],
    )
    t_chunks, i_chunks = _sharded(text_len, degree, uneven), _sharded(image_len, degree, uneven)
    perm = gathered_order(text_len, image_len, text_first, Ulysses(degree, uneven))
    if len(t_chunks) < degree or len(i_chunks) < degree:
        assert perm is None
        return
    t_chunks, i_chunks = [txt[c] for c in t_chunks], [img[c] for c in i_chunks]
    gathered = torch.cat([torch.cat((t, i) if text_first else (i, t)) for t, i in zip(t_chunks, i_chunks)])
    assert torch.equal(gathered[perm], canonical)
    assert torch.equal(canonical[torch.argsort(perm)], gathered)  # the way back, for the output


def test_gathered_order_is_not_the_identity_for_joint_sequences():
    """The FLUX case of the issue: [txt_0, img_0, txt_1, img_1] is not [txt, img]."""
    perm = gathered_order(16, 96, True, Ulysses(2))
    assert not torch.equal(perm, torch.arange(112))
    assert perm[:8].tolist() == list(range(8)) and perm[8:16].tolist() == list(range(56, 64))


def test_gathered_order_none_when_chunks_cannot_be_recovered():
    assert gathered_order(5, 16, True, Ulysses(4)) is None  # torch.chunk(5 tokens, 4) makes 3 chunks


def _cp(**kw):
    cfg = ContextParallelConfig(**kw)
    return ParallelConfig(context_parallel_config=cfg)


@pytest.mark.parametrize(
    "config,expected",
    [
        (None, None),
        (ParallelConfig(), None),
        (_cp(ulysses_degree=2), Ulysses(2, False)),
        (_cp(ulysses_degree=4, ulysses_anything=True), Ulysses(4, True)),
        (ContextParallelConfig(ulysses_degree=3), Ulysses(3, False)),
    ],
    ids=["none", "no-cp", "ulysses2", "ulysses4-anything", "bare-cp-config"],
)
def test_ulysses_of(config, expected):
    assert ulysses_of(config) == expected


@pytest.mark.parametrize("kw", [dict(ring_degree=2), dict(ring_degree=2, ulysses_degree=2)], ids=["ring", "hybrid"])
def test_ulysses_of_refuses_ring(kw):
    with pytest.raises(ValueError, match=r"ring_degree=2.*Supported: Ulysses"):
        ulysses_of(_cp(**kw))


def test_ulysses_rejects_degree_one():
    with pytest.raises(ValueError, match="Ulysses degree 1 must be >= 2"):
        Ulysses(1)
