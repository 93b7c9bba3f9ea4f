"""End to end on the tiny pipelines with Qwen text encoders (`diffattn.tiny.newer`): Qwen-Image, HunyuanVideo 1.5,
FLUX.2 Klein. They are ``core=False`` families, so the family-parametrized fixtures do not run them; this file does:
dense run, gna run (sparse on every module, no fallback, the token grid the pipeline really used), bit-exact
remove, a grid-covering window equal to dense, and ``diffattn generate``."""

from __future__ import annotations

import pytest
import torch

import diffattn
from diffattn.cli import main
from diffattn.tiny import TINY_SPECS, build_tiny_pipeline, tiny_call_kwargs, tiny_output
from diffattn.tiny.encoders import qwen_tokenizer

# name -> (pixels per token side: VAE factor x patch/packing, latent frames of the spec's frame count or None)
FAMILIES = {
    "tiny-qwenimage": (8, None),  # VAE /4, 2x2 packing
    "tiny-hunyuanvideo15": (4, 3),  # VAE /4 spatial, /2 temporal (5 frames -> 3), patch 1
    "tiny-flux2": (4, None),  # VAE /2, 2x2 patchified
}
WINDOW = {"tiny-qwenimage": 3, "tiny-hunyuanvideo15": (2, 3, 3), "tiny-flux2": 3}
NAMES = tuple(FAMILIES)


def test_families_are_registered_as_non_core():
    assert all(name in TINY_SPECS and not TINY_SPECS[name].core for name in NAMES)


@pytest.fixture(params=NAMES)
def built(request, pipelines):
    return request.param, pipelines.pipe(request.param)


def _sizes(name: str) -> list[tuple[int, int]]:
    """The default size and an odd token grid (one multiple more on each side, odd in tokens where possible)."""
    spec = TINY_SPECS[name]
    step = FAMILIES[name][0]
    return [(spec.height, spec.width), (spec.height + step, spec.width + step)]


def _expected(name: str, height: int, width: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(output shape, token grid) for ``name`` at ``height x width``."""
    px, latent_frames = FAMILIES[name]
    kw = tiny_call_kwargs(name, height=height, width=width)
    if latent_frames is None:
        return (1, 3, height, width), (height // px, width // px)
    return (1, kw["num_frames"], 3, height, width), (latent_frames, height // px, width // px)


@pytest.mark.parametrize("size", ["default", "odd"])
def test_gna_runs_sparse_everywhere_and_remove_is_bit_exact(built, size):
    name, pipe = built
    height, width = _sizes(name)[size == "odd"]
    shape, grid = _expected(name, height, width)
    base = tiny_output(pipe, name, height=height, width=width)
    assert base.shape == shape and torch.isfinite(base).all() and base.std() > 0
    assert torch.equal(tiny_output(pipe, name, height=height, width=width), base), "dense run is not deterministic"

    handle = diffattn.apply_attention(pipe, "gna", window=WINDOW[name])
    try:
        out = tiny_output(pipe, name, height=height, width=width)
        stats = handle.stats()
        summary = handle.summary()
    finally:
        handle.remove()
    assert out.shape == shape and torch.isfinite(out).all()
    assert not torch.allclose(out, base, atol=1e-5), "a small window left the output unchanged"
    assert stats and handle.fallback_calls == 0 and handle.sparse_calls > 0, stats
    assert all(s.sparse > 0 and s.fallback == 0 and s.grid == grid for s in stats.values()), (grid, stats)
    assert all(s.extra > 0 for s in stats.values()), "the text tokens were not seen as dense extras"
    assert "never sparse" not in summary, summary
    assert torch.equal(tiny_output(pipe, name, height=height, width=width), base), "remove is not bit-exact"

    # A window covering the whole grid is dense attention: the padded, masked text (HunyuanVideo 1.5) and the
    # joint layout must come out as the unpatched pipeline does.
    with diffattn.attention(pipe, "gna", window=max(grid)) as handle:
        full = tiny_output(pipe, name, height=height, width=width)
    assert handle.sparse_calls > 0 and handle.fallback_calls == 0
    torch.testing.assert_close(full, base, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_generate_cli(tmp_path, capsys, name):
    window = ",".join(map(str, WINDOW[name])) if isinstance(WINDOW[name], tuple) else str(WINDOW[name])
    argv = ["generate", "--model", name, "--window", window, "--no-dense", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    suffix = ".png" if FAMILIES[name][1] is None else ".gif"
    assert (tmp_path / f"gna{suffix}").stat().st_size > 0
    assert "0 dense-fallback" in out and " 0 sparse" not in out, out


def test_qwenimage_template_prefix_is_the_pipelines_crop():
    """The in-memory tokenizer gives the Qwen-Image system prefix exactly the token count the pipeline drops, so
    only the user's prompt (and the closing tokens) reach the transformer, as with the real vocabulary."""
    pipe = build_tiny_pipeline("tiny-qwenimage")
    prefix = pipe.prompt_template_encode.split("{}")[0]
    assert len(pipe.tokenizer(prefix).input_ids) == pipe.prompt_template_encode_start_idx


@pytest.mark.parametrize("text", ["a red fox", "ÄÖ ü 東京 \t\n  x", ""], ids=["ascii", "unicode", "empty"])
def test_qwen_tokenizer_round_trips_any_text(text):
    tok = qwen_tokenizer(["a red"])
    assert tok.decode(tok(text).input_ids) == text
    assert tok.tokenize("a red") == ["a", "Ġred"]  # the given text's pieces are whole tokens


def test_qwen_tokenizer_chat_template_and_special_tokens():
    tok = qwen_tokenizer()
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert text == "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n" + (
        "<think>\n\n</think>\n\n"
    )
    ids = tok("<|im_start|><|image_pad|>").input_ids
    assert ids == tok.convert_tokens_to_ids(["<|im_start|>", "<|image_pad|>"])
    assert tok.pad_token == "<|endoftext|>" and tok.padding_side == "right"
