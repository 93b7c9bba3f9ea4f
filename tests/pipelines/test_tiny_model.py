"""The embedded tiny shapes model: dataset, pipeline round trip, shipped weights, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from diffattn.pipelines.tiny_shapes import data as tiny_data
from diffattn.pipelines.tiny_shapes import pipeline as tm
from diffattn.pipelines.tiny_shapes.scorer import load_scorer, pattern_fid, score


def test_dataset_deterministic_by_seed():
    a, caps_a, la = tiny_data.make_batch(16, seed=7)
    b, caps_b, lb = tiny_data.make_batch(16, seed=7)
    c, _, _ = tiny_data.make_batch(16, seed=8)
    assert torch.equal(a, b) and caps_a == caps_b and torch.equal(la, lb)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("res", [32, 64, 128], ids=lambda r: f"{r}px")
def test_dataset_same_scene_at_any_resolution(res):
    """Area-downsampling a larger rendering gives the 32 px rendering, up to anti-aliasing at edges."""
    scenes = tiny_data.sample_scenes(24, seed=3)
    small = tiny_data.render(scenes, 32)
    big = torch.nn.functional.avg_pool2d(tiny_data.render(scenes, res), res // 32)
    assert (big - small).abs().mean() < 0.02
    assert tiny_data.render(scenes, res, res + 8).shape == (24, 3, res, res + 8)


def test_captions_name_class_and_colours():
    scenes = tiny_data.sample_scenes(60, seed=1)
    for cap, label, fg, bg in zip(tiny_data.captions(scenes), scenes.label, scenes.fg, scenes.bg):
        assert tiny_data.parse_caption(cap) == (int(label), int(fg), int(bg))
    assert tiny_data.caption(2, 0, 2) == "a red ring on a blue background"


@pytest.mark.parametrize(
    "bad, match",
    [
        ("a red zebra on a blue background", "unknown word 'zebra'"),
        ("a red blue background", "exactly one class"),
        ("a circle", "one or two different colours"),
        ("a red red circle", "one or two different colours"),
    ],
    ids=["unknown-word", "no-class", "no-colour", "same-colours"],
)
def test_bad_caption(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_data.parse_caption(bad)


@pytest.fixture(scope="module")
def random_pipe():
    pipe = tm.TinyShapesPipeline(**tm.build_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_round_trips_save_pretrained(random_pipe, tmp_path):
    random_pipe.save_pretrained(tmp_path)
    tm.write_manifest(tmp_path)
    loaded = tm.tiny_model(tmp_path)
    kw = dict(num_inference_steps=2, output_type="pt")
    a = random_pipe(["a red ring on a blue background"], generator=torch.Generator().manual_seed(0), **kw)
    b = loaded(["a red ring on a blue background"], generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a.images, b.images)
    assert a.images.shape == (1, 3, tm.RESOLUTION, tm.RESOLUTION)


@pytest.mark.parametrize("size", [0, -32, 30, 33], ids=["zero", "negative", "not-multiple-30", "odd-33"])
def test_bad_size(random_pipe, size):
    with pytest.raises(ValueError, match=f"height must be a positive multiple of the patch size {tm.PATCH}"):
        random_pipe("a red circle", height=size, width=32, num_inference_steps=1)


def test_unknown_word_in_prompt(random_pipe):
    with pytest.raises(ValueError, match="unknown word 'dog'"):
        random_pipe("a red dog on a blue background", num_inference_steps=1)


def _copy_weights(tmp_path):
    dest = tmp_path / "w"
    shutil.copytree(tm.WEIGHTS_DIR, dest)
    return dest


def test_missing_weights_file_named(tmp_path):
    dest = _copy_weights(tmp_path)
    (dest / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model\.safetensors.*scripts/train_tiny\.py"):
        tm.tiny_model(dest)
    with pytest.raises(FileNotFoundError, match=r"manifest\.json is missing.*train_tiny"):
        tm.tiny_model(tmp_path / "nowhere")


def test_corrupted_weights_file_named(tmp_path):
    dest = _copy_weights(tmp_path)
    f = dest / "text_encoder" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=r"corrupted.*text_encoder/model\.safetensors.*train_tiny"):
        tm.tiny_model(dest)
    (dest / "manifest.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="manifest.*corrupted"):
        tm.tiny_model(dest)


def test_corrupted_scorer_named(tmp_path):
    f = tmp_path / "scorer.safetensors"
    f.write_bytes(b"\x00" * 10)
    with pytest.raises(RuntimeError, match=r"scorer weights corrupted.*train_tiny"):
        load_scorer(f)


def test_shipped_weights_are_small_and_listed():
    files = json.loads((tm.WEIGHTS_DIR / "manifest.json").read_text())["files"]
    assert "scorer.safetensors" in files and "transformer/diffusion_pytorch_model.safetensors" in files
    total = sum((tm.WEIGHTS_DIR / f).stat().st_size for f in files)
    assert total < 20e6


def test_scorer_on_real_images():
    scenes = tiny_data.sample_scenes(120, seed=99)
    imgs, caps = tiny_data.render(scenes, 32), tiny_data.captions(scenes)
    assert score(imgs, caps) >= 0.9
    assert score(imgs.flip(0), caps) < 0.5  # mismatched captions must score low
    real2 = tiny_data.render(tiny_data.sample_scenes(120, seed=100), 32)
    noise = torch.rand_like(real2)
    assert pattern_fid(real2, imgs) < pattern_fid(noise, imgs)


@pytest.mark.slow
def test_shipped_model_draws_the_captioned_class():
    """2 samples per class at the training resolution, batched, 20 steps: the scorer must agree on >= 75%
    (the issue's bar; chance is 1/6). Seeds are fixed, so this is deterministic for the shipped weights."""
    pipe = tm.tiny_model()
    labels = torch.arange(len(tiny_data.CLASSES)).repeat_interleave(2)
    caps = tiny_data.captions(tiny_data.sample_scenes(len(labels), seed=5, labels=labels))
    out = pipe(caps, num_inference_steps=20, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (12, 3, tm.RESOLUTION, tm.RESOLUTION)
    assert score(out.images, caps) >= 0.75


def test_cli_tiny_rejects_unknown_caption_word(tmp_path, capsys):
    from diffattn.cli import main

    assert main(["generate", "--out", str(tmp_path), "--prompt", "a red fox in the snow"]) == 2
    assert "unknown word 'fox'" in capsys.readouterr().err
