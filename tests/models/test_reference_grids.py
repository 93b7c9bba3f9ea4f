"""Reference-image grids (issue 23): edit models pack reference images with the target in one latent stream
(FLUX Kontext, FLUX.2, Qwen-Image-Edit). Where the references' ids form grids of their own, their queries attend
their own grid's neighbourhood plus every other token (text, target, other references) densely, and the target's
queries attend the target's neighbourhood plus every other token densely: the rule, checked against a dense mask
built from it; its rows, checked by what they depend on; a covering window, checked to be dense."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import diffattn
from diffattn.layout import TokenSplit
from diffattn.methods.gna import GNAConfig
from diffattn.methods.naive import gna_mask
from diffattn.patch import intercept
from diffattn.tiny.denoisers import build_tiny_model, tiny_forward

from .test_every_denoiser import HUGE

WINDOW = 3


def _ids(rows: int, cols: int, t: int) -> torch.Tensor:
    return torch.cartesian_prod(torch.tensor([t]), torch.arange(rows), torch.arange(cols), torch.tensor([0]))


#: name -> the FLUX.2 stream's images, in stream order: (rows, cols, t); the target is the one at t = 0 (the last on
#: a tie), every other one a reference
STREAMS = {
    "kv-refs-ahead": [(4, 1, 0), (4, 4, 0)],  # diffusers' own KV test config
    "refs-after": [(4, 4, 0), (2, 3, 10), (3, 2, 20)],  # Flux2Pipeline
    "target-between": [(2, 3, 10), (4, 4, 0), (3, 2, 20)],
}


def _flux2(stream: list[tuple[int, int, int]]) -> tuple[torch.nn.Module, dict[str, Any], list[slice], int]:
    """The tiny FLUX.2 with its latent stream replaced by ``stream``; the image rows of the stream, and the index
    of the target among them."""
    model, inputs = build_tiny_model("Flux2Transformer2DModel[refs-ahead]")
    sizes = [r * c for r, c, _ in stream]
    gen = torch.Generator().manual_seed(5)
    inputs["hidden_states"] = torch.randn(1, sum(sizes), 4, generator=gen)
    inputs["img_ids"] = torch.cat([_ids(r, c, t) for r, c, t in stream])[None]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    rows = [slice(s, s + n) for s, n in zip(starts, sizes)]
    target = max(i for i, (_, _, t) in enumerate(stream) if t == min(t for _, _, t in stream))
    return model, inputs, rows, target


@contextlib.contextmanager
def _calls(model: torch.nn.Module, window: int):
    """Record every patched attention call under GNA ``window``: (q, k, v [B, H, S, D], kwargs, split, output)."""
    calls: list[dict[str, Any]] = []
    attend, split_of = intercept._PatchedAttention.attend, intercept.split_of
    splits: list[Any] = []

    def spy_split(*args: Any, **kwargs: Any):
        splits.append(split_of(*args, **kwargs))
        return splits[-1]

    def spy_attend(self, func, args, kwargs, cats=()):  # noqa: ANN001
        out = attend(self, func, args, kwargs, cats)
        p = dict(zip(intercept._SDPA_PARAMS, args), **kwargs)
        calls.append(dict(q=p["query"], k=p["key"], v=p["value"], scale=p.get("scale"), split=splits[-1], out=out))
        return out

    with pytest.MonkeyPatch.context() as mp, diffattn.attention(model, "gna", window=window, preset=False) as handle:
        mp.setattr(intercept._PatchedAttention, "attend", spy_attend)
        mp.setattr(intercept, "split_of", spy_split)
        yield calls, handle


def _rule_mask(split: TokenSplit, window: int) -> torch.Tensor:
    """``[S, S]`` bool, from the rule: a grid's query attends its own grid's GNA neighbourhood and every token
    outside that grid; any other query attends every key."""
    mask = torch.ones(split.seq_len, split.seq_len, dtype=torch.bool)
    for rows, grid in ((split.image, split.grid), *split.refs):
        mask[rows, rows] = gna_mask(grid, *GNAConfig(window=window).resolve(grid))
    return mask


@pytest.mark.parametrize("stream", list(STREAMS), ids=list(STREAMS))
def test_every_grid_attends_its_own_neighbourhood_and_the_rest_densely(stream):
    model, inputs, rows, target = _flux2(STREAMS[stream])
    with _calls(model, WINDOW) as (calls, handle):
        tiny_forward(model, inputs)
    assert calls and handle.fallback_calls == 0
    for call in calls:
        split = call["split"]
        assert isinstance(split, TokenSplit)
        text = split.seq_len - sum(r.stop - r.start for r in rows)  # 48 text tokens ahead of the stream
        assert split.image == slice(text + rows[target].start, text + rows[target].stop)
        refs = [slice(text + r.start, text + r.stop) for i, r in enumerate(rows) if i != target]
        assert [r for r, _ in split.refs] == refs
        q, k, v = (call[x].double() for x in ("q", "k", "v"))
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=_rule_mask(split, WINDOW), scale=call["scale"])
        torch.testing.assert_close(call["out"].double(), expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(call["out"].double(), F.scaled_dot_product_attention(q, k, v), atol=1e-4)


@pytest.mark.parametrize("stream", list(STREAMS), ids=list(STREAMS))
def test_a_covering_window_is_dense(stream):
    model, inputs, _, _ = _flux2(STREAMS[stream])
    base = tiny_forward(model, inputs)
    with diffattn.attention(model, "gna", window=HUGE, preset=False) as handle:
        out = tiny_forward(model, inputs)
    assert handle.sparse_calls > 0 and handle.fallback_calls == 0
    torch.testing.assert_close(out, base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stream", list(STREAMS), ids=list(STREAMS))
def test_each_grid_sits_on_the_rows_of_its_image(stream):
    """Change one image of the stream only: exactly that image's rows of the first call's keys change, so every
    grid (target and references) is placed on its own tokens."""
    model, inputs, rows, target = _flux2(STREAMS[stream])

    def first(hidden: torch.Tensor) -> tuple[torch.Tensor, TokenSplit]:
        with _calls(model, WINDOW) as (calls, _):
            tiny_forward(model, dict(inputs, hidden_states=hidden))
        return calls[0]["k"], calls[0]["split"]

    base_k, split = first(inputs["hidden_states"])
    text = split.seq_len - inputs["hidden_states"].shape[1]
    placed = [split.image if i == target else None for i in range(len(rows))]
    refs = iter(r for r, _ in split.refs)
    placed = [p if p is not None else next(refs) for p in placed]
    for i, image in enumerate(rows):
        hidden = inputs["hidden_states"].clone()
        hidden[:, image] += 1.0
        k, _ = first(hidden)
        changed = (k - base_k).abs().amax(dim=(0, 1, 3)) > 1e-6  # [S]
        assert changed.nonzero().flatten().tolist() == list(range(text + image.start, text + image.stop))
        assert placed[i] == slice(text + image.start, text + image.stop)


def _kv_model():
    """The tiny FLUX.2 with diffusers' KV processors (Klein KV: references attend themselves on the first step and
    are cached as keys for the later ones)."""
    from diffusers.models.transformers.transformer_flux2 import Flux2KVAttnProcessor, Flux2KVParallelSelfAttnProcessor

    model, inputs = build_tiny_model("Flux2Transformer2DModel[refs-ahead]")
    for block in model.transformer_blocks:
        block.attn.set_processor(Flux2KVAttnProcessor())
    for block in model.single_transformer_blocks:
        block.attn.set_processor(Flux2KVParallelSelfAttnProcessor())
    cached = dict(inputs, hidden_states=inputs["hidden_states"][:, 4:], img_ids=inputs["img_ids"][:, 4:])
    return model, inputs, cached


def _kv_run(model, inputs, cached) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX.2 KV: the extract step (4 references ahead of the 4x4 target), then a cached step (the target alone)."""
    with torch.no_grad():
        out, cache = model(**inputs, kv_cache_mode="extract", num_ref_tokens=4, return_dict=False)
        later = model(**cached, kv_cache=cache, kv_cache_mode="cached", return_dict=False)[0]
    return out, later


def test_flux2_kv_modes_attend_by_the_rule():
    """Extract mode makes two calls per module: text + target queries over [text, references, target] keys, then
    the references over themselves; cached mode: text + target queries over [text, cached references, target].
    Every call runs sparse, by the rule (the reference rows without queries are dense keys), and a covering window
    is dense."""
    model, inputs, cached = _kv_model()
    base = _kv_run(model, inputs, cached)
    with _calls(model, WINDOW) as (calls, handle):
        _kv_run(model, inputs, cached)
    assert handle.fallback_calls == 0 and len(calls) == 2 * 3  # two modules: 2 extract calls + 1 cached call each
    kinds = set()
    for call in calls:
        split, q, k, v = call["split"], *(call[x].double() for x in ("q", "k", "v"))
        mask = _rule_mask(split, WINDOW)
        rows = torch.ones(split.seq_len, dtype=torch.bool)
        if q.shape[2] < k.shape[2]:  # references (extract) or cached references: keys without queries
            rows[48 : 48 + k.shape[2] - q.shape[2]] = False
        kinds.add((q.shape[2], k.shape[2], split.grid))
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[rows], scale=call["scale"])
        torch.testing.assert_close(call["out"].double(), expected, atol=1e-5, rtol=1e-5)
    # extract: [text 48 + target 16] over 68 keys, the 4x1 references over themselves; cached: 64 over 68 keys
    assert kinds == {(64, 68, (4, 4)), (4, 4, (4, 1))}
    with diffattn.attention(model, "gna", window=HUGE, preset=False) as handle:
        dense = _kv_run(model, inputs, cached)
    assert handle.fallback_calls == 0 and handle.sparse_calls == 6
    for a, b in zip(dense, base):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "entries", [[(1, 4, 4), (1, 2, 3)], [(1, 4, 4), (1, 3, 2), (1, 2, 2)]], ids=["one-ref", "two-refs"]
)
def test_qwen_image_edit_references_from_img_shapes(entries):
    """Qwen-Image-Edit lists the target and its references in ``img_shapes``: each reference is a grid of its own,
    attended by the rule."""
    model, inputs = build_tiny_model("QwenImageTransformer2DModel")
    tokens = sum(f * h * w for f, h, w in entries)
    inputs["hidden_states"] = torch.randn(1, tokens, 16, generator=torch.Generator().manual_seed(3))
    inputs["img_shapes"] = [entries]
    base = tiny_forward(model, inputs)
    with _calls(model, WINDOW) as (calls, handle):
        tiny_forward(model, inputs)
    assert calls and handle.fallback_calls == 0
    for call in calls:
        split = call["split"]
        assert split.grid == (4, 4) and [g for _, g in split.refs] == [(h, w) for _, h, w in entries[1:]]
        q, k, v = (call[x].double() for x in ("q", "k", "v"))
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=_rule_mask(split, WINDOW), scale=call["scale"])
        torch.testing.assert_close(call["out"].double(), expected, atol=1e-5, rtol=1e-5)
    with diffattn.attention(model, "gna", window=HUGE, preset=False):
        torch.testing.assert_close(tiny_forward(model, inputs), base, atol=1e-5, rtol=1e-5)
