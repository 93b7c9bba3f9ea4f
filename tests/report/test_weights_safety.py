"""Weights handed to the metrics are untrusted: every hostile file type is refused with a clear error and nothing in
it runs (each payload would write a marker file); honest files load into architectures the project controls."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffattn.report.lpips import LPIPS
from diffattn.report.quality import load_clip, load_clip_model, load_feature_extractor, load_lpips
from diffattn.report.weights import UnsafeWeightsError


class _Payload:
    """Unpickling this runs ``exec``: it writes the marker file (what a crafted weights file does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


class _ScriptedPayload(torch.nn.Module):
    """A TorchScript 'LPIPS' whose ``__setstate__`` (run by torch.jit.load) writes the marker through
    ``torch.from_file(shared=True)``."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x - y).abs().mean((1, 2, 3))

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        written = torch.from_file(self.marker, shared=True, size=3, dtype=torch.uint8)
        written.fill_(65)
        print(written.sum())  # keeps the write alive (TorchScript drops unused results)


def _pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"weight": _Payload(marker)}))


def _torch_save(path: Path, marker: Path) -> None:
    torch.save({"weight": torch.zeros(2), "extra": _Payload(marker)}, path)


def _torchscript(path: Path, marker: Path) -> None:
    torch.jit.script(_ScriptedPayload(str(marker))).save(str(path))


HOSTILE = {"pickle": _pickle, "torch-save": _torch_save, "torchscript": _torchscript}
LOADERS = {"lpips": load_lpips, "inception": load_feature_extractor}


@pytest.mark.parametrize("loader", LOADERS, ids=str)
@pytest.mark.parametrize("kind", HOSTILE, ids=str)
def test_hostile_weights_are_refused_and_never_run(tmp_path, capsys, kind, loader):
    marker = tmp_path / "marker"
    path = tmp_path / f"weights.{'pt' if kind != 'pickle' else 'pkl'}"
    HOSTILE[kind](path, marker)
    assert not marker.exists()  # writing the file ran nothing
    with pytest.raises(UnsafeWeightsError, match=r"weights '.*weights\.p.*' .*(TorchScript|not a plain|neither)") as e:
        LOADERS[loader](str(path))
    assert "safetensors" in str(e.value) and "\n" not in str(e.value)  # one line that says what is accepted
    assert not marker.exists(), f"the {kind} payload ran"
    assert "tensor(" not in capsys.readouterr().out  # the TorchScript payload's print never ran either


@pytest.mark.parametrize("loader", LOADERS, ids=str)
def test_a_text_file_or_a_folder_is_a_clear_error(tmp_path, loader):
    text = tmp_path / "notes.txt"
    text.write_text("not weights\n")
    with pytest.raises(UnsafeWeightsError, match="neither safetensors nor a torch.save checkpoint"):
        LOADERS[loader](str(text))
    with pytest.raises(UnsafeWeightsError, match="is a folder, not a file"):
        LOADERS[loader](str(tmp_path))


def _random_lpips(net: str) -> LPIPS:
    torch.manual_seed(0)
    model = LPIPS(net)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.rand_like(p) * 0.1 if name.startswith("lin") else torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_loads_safetensors_and_weights_only_state_dicts(tmp_path, net):
    model = _random_lpips(net)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(1)), torch.rand(2, 3, 40, 48)
    expected = model(x, y)
    assert expected.shape == (2,) and (expected > 0).all()
    save_file(state, str(tmp_path / "lpips.safetensors"))
    torch.save(state, tmp_path / "lpips.pth")
    # the LPIPS package's naming: every 1x1 conv twice (lin{k} and lins.{k}) and its persistent scaling buffers
    package = {**state, **{k.replace("lin", "lins.", 1): v.clone() for k, v in state.items() if k.startswith("lin")}}
    package |= {"scaling_layer.shift": torch.zeros(1, 3, 1, 1), "scaling_layer.scale": torch.ones(1, 3, 1, 1)}
    save_file(package, str(tmp_path / "package.safetensors"))
    for name in ("lpips.safetensors", "lpips.pth", "package.safetensors"):
        loaded = load_lpips(str(tmp_path / name))
        assert loaded.net_type == net
        assert torch.equal(loaded(x, y), expected), name
        assert torch.equal(loaded(x, x), torch.zeros(2))
    del state["lin2.model.1.weight"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match=r"do not fit the LPIPS alex/vgg architecture \(missing: \['lin2"):
        load_lpips(str(tmp_path / "partial.safetensors"))


def test_lpips_equals_torchmetrics_lpips():
    """The fixed architecture is torchmetrics' LPIPS (needs torchvision for its backbone, which tests do not
    install: checked where it is present)."""
    pytest.importorskip("torchvision")
    from torchmetrics.functional.image.lpips import _LPIPS

    for net in ("alex", "vgg"):
        ours = _random_lpips(net)
        ref = _LPIPS(pretrained=False, net=net, pnet_rand=True).eval()
        missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("lins.") for k in missing)
        x, y = torch.rand(3, 3, 64, 80), torch.rand(3, 3, 64, 80)
        assert torch.allclose(ref(x, y, normalize=True).flatten(), ours(x, y), rtol=1e-5, atol=1e-7)


def test_inception_without_torch_fidelity_names_the_extra(tmp_path, monkeypatch):
    from torchmetrics.image import fid

    monkeypatch.setattr(fid, "_TORCH_FIDELITY_AVAILABLE", False)
    save_file({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, str(tmp_path / "inception.safetensors"))
    with pytest.raises(ModuleNotFoundError, match=r"needs torch-fidelity: pip install 'diffattn\[fid\]'"):
        load_feature_extractor(str(tmp_path / "inception.safetensors"))


def test_inception_weights_go_into_torchmetrics_architecture(tmp_path):
    """Safetensors and weights-only state dicts load into torchmetrics' NoTrainInceptionV3 (where torch-fidelity
    is installed), with exactly its output."""
    pytest.importorskip("torch_fidelity")
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe
    from torchmetrics.image.fid import NoTrainInceptionV3

    torch.manual_seed(0)
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), mock.patch.object(
        torch.nn.Module, "load_state_dict", lambda self, sd, *a, **k: None
    ):
        ref = NoTrainInceptionV3("inception-v3-compat", ["2048"], None)  # random weights, nothing downloaded
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    save_file(state, str(tmp_path / "inception.safetensors"))
    torch.save(state, tmp_path / "inception.pth")
    x = torch.rand(2, 3, 40, 48)
    for name in ("inception.safetensors", "inception.pth"):
        ours = load_feature_extractor(str(tmp_path / name))
        assert torch.equal(ours(x), ref((x * 255).round().to(torch.uint8)))


# --- CLIP: a local folder, loaded with transformers' own CLIP classes, safetensors only, never remote code


def _clip_folder(path: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from diffattn.tiny.encoders import clip_tokenizer

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(77)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=len(tokenizer),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return _clip_folder(tmp_path_factory.mktemp("my-clip"))


def test_clip_loads_any_local_folder_and_scores_by_torchmetrics_formula(clip_dir):
    """A folder whose path names no vendor loads (torchmetrics alone rejected it), and the score is CLIPScore's:
    ``max(100 cos(image features, text features), 0)``."""
    assert "openai" not in str(clip_dir)
    score = load_clip(str(clip_dir))
    model, processor = load_clip_model(clip_dir)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["a red fox", "two cats"]
    got = score(images, prompts)
    with torch.no_grad():
        pixels = processor(images=[(i * 255).round().to(torch.uint8) for i in images], return_tensors="pt")
        text = processor(text=prompts, return_tensors="pt", padding=True)
        f_img = model.get_image_features(pixels["pixel_values"])
        f_txt = model.get_text_features(text["input_ids"], text["attention_mask"])
    f_img, f_txt = (getattr(f, "pooler_output", f) for f in (f_img, f_txt))
    cos = torch.nn.functional.cosine_similarity(f_img, f_txt, dim=-1)
    assert got.shape == (2,)
    assert torch.allclose(got, (100 * cos).clamp_min(0), atol=1e-4)


def _remote_code_folder(base: Path, marker: Path) -> Path:
    """A CLIP-looking folder (under a vendor name torchmetrics trusts) whose config maps to its own code."""
    folder = _clip_folder(base / "jinaai" / "evil-clip")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder


def test_clip_folder_with_remote_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "marker"
    folder = _remote_code_folder(tmp_path, marker)
    with pytest.raises(ValueError, match=r"ships remote code \(evil\.py, auto_map in config\.json\); diffattn never"):
        load_clip(str(folder))
    assert not marker.exists()


def test_clip_folder_with_pickle_weights_is_refused_and_never_run(tmp_path, clip_dir):
    import shutil

    marker = tmp_path / "marker"
    folder = tmp_path / "openai-clip"
    shutil.copytree(clip_dir, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"text_model.embeddings.token_embedding.weight": _Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="cannot load CLIP from .*openai-clip"):
        load_clip(str(folder))
    assert not marker.exists()
