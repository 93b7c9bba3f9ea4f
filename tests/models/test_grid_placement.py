"""Where diffattn places the token grid, checked by what the tokens depend on: a grid at the wrong offset
(e.g. over text rows) gives the same output as the right one under a huge window and a different one
under a small window either way, so test_every_denoiser cannot see it.

For the first patched attention call of one forward (of each supported class) we capture its keys and
queries (``[B, H, S, D]``) and the `TokenSplit` diffattn chose, then change only the latent input, or only
the text input, and see which rows change: every grid row must follow the latent (keys and queries) and
ignore the text; rows outside the latent stream (text, registers) must ignore the latent and, where there
are any, follow the text; in-stream extras (references, history, prefix tokens, padding) must ignore the
text. Where an architecture mixes text into the grid before its first attention (pooled-text modulation,
cross-attention-only blocks first), that check is listed in `EXCEPTIONS` with the reason; a listed
exception that starts to hold fails too. Models whose latent and text pass through separate refiners are
checked at their first joint call as well; later calls of the same role, length and grid must place the
grid at the same rows; and a grid shifted on purpose must fail the checks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
from typing import Any

import pytest
import torch
from torch import Tensor

import diffattn
from diffattn.layout import ModuleRole, TokenLayout, TokenSplit
from diffattn.models import REFUSED
from diffattn.patch import intercept
from diffattn.tiny.denoisers import TINY, VARIANTS, build_tiny_model, denoiser_classes, tiny_forward

from .test_every_denoiser import HUGE, NEEDS, PENDING, SLOW

#: inputs that carry the latent (the denoised sample), first one present wins
LATENT_KEYS = ("hidden_states", "sample", "x", "latent_image_embeds")
#: inputs that carry text embeddings (every one present is changed together)
TEXT_KEYS = (
    "encoder_hidden_states",
    "encoder_hidden_states_1",
    "encoder_hidden_states_2",
    "encoder_hidden_states_t5",
    "encoder_hidden_states_llama3",
    "text_encoder_layers",
    "text_bth",
    "cap_feats",
    "clip_text",
    "prompt_embeds",
)
#: per class: the latent input where it is not one of LATENT_KEYS (integer VQ codes)
LATENT = {"UVit2DModel": "input_ids"}
#: per class: the text inputs where they are not TEXT_KEYS (OmniGen tokenises the prompt itself)
TEXT = {"OmniGenTransformer2DModel": ("input_ids",)}


@dataclasses.dataclass
class Capture:
    """The first patched SDPA call of a forward: module name, ``q``/``k`` ``[B, H, S, D]``, the split."""

    name: str | None = None
    q: Tensor | None = None
    k: Tensor | None = None
    split: TokenSplit | str | None = None
    layout: TokenLayout | None = None
    role: ModuleRole | None = None
    #: (module, role, split or why not) of every patched call of the forward, in call order
    calls: list[tuple[str, ModuleRole, TokenSplit | str]] = dataclasses.field(default_factory=list)
    current: str = ""


@contextlib.contextmanager
def first_call(model: torch.nn.Module, at: str = ""):
    """Run ``model`` under GNA (dense-equivalent window) and capture its first patched attention call
    whose module name starts with ``at`` (and the split of every call)."""
    cap = Capture()
    attend, split_of = intercept._PatchedAttention.attend, intercept.split_of

    def spy_attend(self, func, args, kwargs, cats=()):  # noqa: ANN001
        if cap.name is None and self.name.startswith(at):
            p = dict(zip(intercept._SDPA_PARAMS, args))
            p.update(kwargs)
            cap.name, cap.q, cap.k = self.name, p["query"].detach().clone(), p["key"].detach().clone()
            cap.layout, cap.role = self.runtime.layout, self.role
        cap.current = self.name
        return attend(self, func, args, kwargs, cats)

    def spy_split(*args: Any, **kwargs: Any):
        split = split_of(*args, **kwargs)
        if cap.split is None and cap.current.startswith(at):
            cap.split = split
        cap.calls.append((cap.current, args[1], split))
        return split

    with (
        pytest.MonkeyPatch.context() as mp,
        diffattn.attention(model, "gna", window=HUGE, preset=False),
    ):
        mp.setattr(intercept._PatchedAttention, "attend", spy_attend)
        mp.setattr(intercept, "split_of", spy_split)
        yield cap


def _capture(model: torch.nn.Module, inputs: dict[str, Any], at: str = "") -> Capture:
    with first_call(model, at) as cap:
        tiny_forward(model, inputs)
    assert cap.name is not None, "no patched attention call ran"
    assert isinstance(cap.split, TokenSplit), f"{cap.name}: no grid split: {cap.split}"
    return cap


def _redraw(x: Any, gen: torch.Generator) -> Any:
    """``x`` with every float tensor redrawn at random (same shape), integer tensors shifted by one code."""
    if isinstance(x, Tensor):
        if x.is_floating_point():
            return torch.randn(x.shape, generator=gen, dtype=x.dtype)
        return (x + 1) % (int(x.max()) + 1)  # every code moves, none leaves [0, max]
    if isinstance(x, list | tuple):
        return type(x)(_redraw(t, gen) for t in x)
    return x


def _changed(inputs: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1234)
    return {k: (_redraw(v, gen) if k in keys else v) for k, v in inputs.items()}


def _row_diff(a: Tensor, b: Tensor) -> Tensor:
    """Per-token max abs difference of ``[B, H, S, D]`` tensors: ``[S]``."""
    return (a - b).abs().amax(dim=(0, 1, 3))


def _outside_stream(cap: Capture) -> Tensor:
    """``[S]`` bool: the rows outside the denoiser's latent stream (text, registers; not the in-stream
    references or prefix tokens packed with the grid), as `TokenLayout.split` placed them."""
    img, layout, role = cap.split.image, cap.layout, cap.role
    top = role.kind == "self" and role.level == 0 and not role.grid_only
    n = img.stop - img.start
    stream = layout.stream_len if top and layout.stream_len is not None else n
    start = img.start - (layout.grid_offset if top else 0)
    out = torch.ones(cap.split.seq_len, dtype=torch.bool)
    out[start : start + stream] = False
    return out


@dataclasses.dataclass
class Placement:
    """What the first patched attention call of class ``name`` depends on, per key row (``[S]`` max abs
    change when only the latent / only the text input changes; ``text`` None for a model without text)."""

    module: str
    split: TokenSplit
    grid: Tensor  # [S] bool: rows diffattn attends as the grid
    outside: Tensor  # [S] bool: rows outside the latent stream
    latent: Tensor
    text: Tensor | None
    q_latent: Tensor  # [S_q] change of the queries of the grid rows when the latent changes

    def __str__(self) -> str:
        s = self.split
        return f"{self.module}: grid {s.grid} at rows {s.image.start}:{s.image.stop} of {s.seq_len}"


def placement(name: str, at: str = "") -> Placement:
    model, inputs = build_tiny_model(name)
    latent = LATENT.get(name) or next(k for k in LATENT_KEYS if k in inputs)
    text = TEXT.get(name) or tuple(k for k in TEXT_KEYS if inputs.get(k) is not None)
    base = _capture(model, inputs, at)
    again = _capture(model, inputs, at)
    assert torch.equal(again.k, base.k) and torch.equal(again.q, base.q), "the forward is not deterministic"

    def changed(keys: tuple[str, ...]) -> Capture:
        cap = _capture(model, _changed(inputs, keys), at)
        assert (cap.name, cap.split) == (base.name, base.split), f"{keys} moved the first call or its split"
        return cap

    img = base.split.image
    grid = torch.zeros(base.split.seq_len, dtype=torch.bool)
    grid[img] = True
    lat = changed((latent,))
    full_q = base.q.shape[-2] == base.k.shape[-2]
    q_grid = (lambda c: c.q[:, :, img]) if full_q else (lambda c: c.q)  # image-only queries
    return Placement(
        module=base.name,
        split=base.split,
        grid=grid,
        outside=_outside_stream(base),
        latent=_row_diff(lat.k, base.k),
        text=_row_diff(changed(text).k, base.k) if text else None,
        q_latent=_row_diff(q_grid(lat), q_grid(base)),
    )


#: the smallest change of a row that counts as "changed" (unchanged rows are bit-equal: the forward is deterministic)
TOL = 1e-5

#: classes without a text input to vary (the text checks do not apply), and why
NO_TEXT: dict[str, str] = {
    "DiTTransformer2DModel": "class-conditional: class_labels, no text",
    "UNet2DModel": "unconditional",
    "UNet2DModel[ncsnpp]": "unconditional",
}

#: per class, the checks that do not hold at its first attention call by construction, and why
_POOLED = "the time embedding that modulates every block adds text pooled from "
EXCEPTIONS: dict[str, dict[str, str]] = {
    "HunyuanDiT2DModel": {"grid_ignores_text": _POOLED + "encoder_hidden_states_t5 (time_extra_emb)"},
    "Kandinsky3UNet": {"grid_ignores_text": _POOLED + "encoder_hidden_states (add_time_condition)"},
    "LongCatAudioDiTTransformer": {"grid_ignores_text": "the global AdaLN condition adds the text mean "
                                   "(adaln_use_text_cond)"},
    "LuminaNextDiT2DModel": {"grid_ignores_text": _POOLED + "encoder_hidden_states (time_caption_embed)"},
    "MochiTransformer3DModel": {"grid_ignores_text": _POOLED + "encoder_hidden_states (time_embed)"},
    "MiniMaxMusic3Transformer1DModel": {"grid_ignores_text": "its frame-aligned condition is concatenated to the "
                                        "latent's channels before proj_in: every grid token carries it"},
    "UVit2DModel": {"grid_ignores_text": "down_block's SkipFF blocks (both attentions cross-attention, not "
                    "patched) mix the text into the grid before transformer_layers.0.attn1"},
    **{
        name: {"extras_ignore_text": "one packed sequence built in forward: the layout's latent stream is the whole "
               "sequence with the grid at grid_offset, so its text rows count as in-stream extras"}
        for name in ("Ideogram4Transformer2DModel", "OmniGenTransformer2DModel", "UniDiffuserModel")
    },
    "DreamLiteUNetModel": {"grid_ignores_text": "down_blocks 0-1 are cross-attention-only blocks: the text is mixed "
                           "into the grid before the first self-attention (down_blocks.2)"},
}


def _cases() -> list:
    cases = []
    for name in [*denoiser_classes(), *sorted(VARIANTS)]:
        if (name not in TINY and name not in VARIANTS) or name in REFUSED or name in PENDING:
            continue  # test_every_denoiser classifies these
        marks = [pytest.mark.slow] if name in SLOW else []
        cases.append(pytest.param(name, marks=marks, id=name))
    return cases


def _failed_checks(p: Placement) -> set[str]:
    checks = {
        "grid_follows_latent": bool((p.latent[p.grid] > TOL).all()) and bool((p.q_latent > TOL).all()),
        "outside_ignores_latent": not bool((p.latent[p.outside] > TOL).any()),
        "grid_ignores_text": p.text is None or not bool((p.text[p.grid] > TOL).any()),
        # what is packed with the grid in the latent stream (references, history, prefix tokens, padding)
        "extras_ignore_text": p.text is None or not bool((p.text[~p.outside & ~p.grid] > TOL).any()),
        # any, not all: masked or padded text rows may not change
        "outside_follows_text": p.text is None or not bool(p.outside.any()) or bool((p.text[p.outside] > TOL).any()),
    }
    return {c for c, ok in checks.items() if not ok}


def _rows(flags: Tensor) -> str:
    idx = flags.nonzero().flatten().tolist()
    return f"{len(idx)} rows {idx[:8]}{'...' if len(idx) > 8 else ''}"


def _detail(p: Placement) -> str:
    return (
        f"{p}; outside the stream: {_rows(p.outside)}; changed by the latent: {_rows(p.latent > TOL)}"
        + ("" if p.text is None else f"; changed by the text: {_rows(p.text > TOL)}")
    )


@pytest.mark.parametrize("name", _cases())
def test_grid_rows_follow_the_latent_and_not_the_text(name):
    if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
        pytest.skip(f"{name} needs {NEEDS[name]}")
    p = placement(name)
    img = p.split.image
    assert img.stop - img.start == math.prod(p.split.grid), f"{p}: the grid range is not prod(grid) long"
    assert (p.text is None) == (name in NO_TEXT), f"{p}: text input {'missing' if p.text is None else 'present'}"
    failed = _failed_checks(p)
    expected = set(EXCEPTIONS.get(name, {}))
    assert failed == expected, f"failed {sorted(failed)}, listed exceptions {sorted(expected)}: {_detail(p)}"


#: the first joint call of models whose latent and text pass through separate refiners / per-mode blocks
#: first: neither has seen the other yet, so the dependence checks hold there too
JOINT_AFTER_SEPARATE = {
    "BriaFibo2Transformer2DModel": "layers.0.",
    "Flux3Transformer2DModel": "single_transformer_blocks.0.",
    "Lumina2Transformer2DModel": "layers.0.",
    "ZImageTransformer2DModel": "layers.0.",
}


@pytest.mark.parametrize(("name", "at"), [pytest.param(n, a, id=n) for n, a in JOINT_AFTER_SEPARATE.items()])
def test_first_joint_call_after_separate_streams(name, at):
    p = placement(name, at)
    assert p.module.startswith(at) and p.text is not None
    img = p.split.image
    assert img.stop - img.start == math.prod(p.split.grid), f"{p}: the grid range is not prod(grid) long"
    assert bool(p.outside.any()), f"{p}: no text rows outside the latent stream at a joint call"
    assert not _failed_checks(p), f"failed {sorted(_failed_checks(p))}: {_detail(p)}"


@pytest.mark.parametrize("name", _cases())
def test_later_calls_place_the_grid_as_the_first(name):
    """Later modules cannot be checked by dependence (text and image mix after the first joint attention),
    but a call of the same role, sequence length and grid as the first must place the grid at the same rows
    (e.g. FLUX's single-stream blocks, which receive text and image already joined, as its joint blocks)."""
    if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
        pytest.skip(f"{name} needs {NEEDS[name]}")
    model, inputs = build_tiny_model(name)
    first = _capture(model, inputs)
    same = [(m, s) for m, r, s in first.calls if r == first.role and isinstance(s, TokenSplit)
            and (s.seq_len, s.grid) == (first.split.seq_len, first.split.grid)]
    moved = [(m, s.image) for m, s in same if s.image != first.split.image]
    assert not moved, f"{first.name} has the grid at {first.split.image}, these elsewhere: {moved}"
    unsplit = [(m, s) for m, _, s in first.calls if isinstance(s, str)]
    assert not unsplit, unsplit


def test_every_listed_class_is_a_case():
    names = {c.values[0] for c in _cases()}
    for table in (NO_TEXT, EXCEPTIONS, LATENT, TEXT, JOINT_AFTER_SEPARATE):
        assert set(table) <= names, sorted(set(table) - names)


@pytest.mark.parametrize(
    ("name", "shift"),
    [
        pytest.param("FluxTransformer2DModel", -48, id="flux-over-the-text-prefix"),
        pytest.param("FluxTransformer2DModel", -1, id="flux-one-row-early"),
        pytest.param("SD3Transformer2DModel", 1, id="sd3-one-row-into-the-text-suffix", marks=pytest.mark.slow),
        pytest.param("HunyuanVideoFramepackTransformer3DModel", -40, id="framepack-over-the-history"),
    ],
)
def test_a_misplaced_grid_is_caught(monkeypatch, name, shift):
    """The checks can fail: the grid moved by ``shift`` rows (onto text, or onto in-stream history) fails
    them, while the true placement passes."""
    split = TokenLayout.split

    def misplaced(self, *args, **kwargs):  # noqa: ANN001
        out = split(self, *args, **kwargs)
        if not isinstance(out, TokenSplit):
            return out
        return dataclasses.replace(out, image=slice(out.image.start + shift, out.image.stop + shift))

    before = placement(name)
    assert not _failed_checks(before), before
    monkeypatch.setattr(TokenLayout, "split", misplaced)
    after = placement(name)
    assert after.split.image.start == before.split.image.start + shift
    assert {"grid_follows_latent", "grid_ignores_text"} & _failed_checks(after), after
