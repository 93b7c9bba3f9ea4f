"""Image quality metrics, all on torchmetrics; weights only from what the user injects, never downloaded.

Images are float tensors in [0, 1]: one image ``[C, H, W]``, a batch ``[N, C, H, W]``, or a video
``[F, C, H, W]`` (its frames are scored as a batch).

- PSNR / SSIM: no weights. PSNR of identical images is capped at `PSNR_CAP_DB` (JSON has no inf).
- LPIPS: an injected callable ``(images, refs) -> [N]`` distances, or a weights file for the project's own LPIPS
  architecture (`lpips`).
- CLIP score: an injected callable ``(images, prompts) -> [N]`` scores, or a local Hugging Face CLIP folder whose
  model and processor are loaded here (transformers' CLIP classes, safetensors, no remote code) and handed to
  torchmetrics ``CLIPScore``.
- FID: torchmetrics ``FrechetInceptionDistance`` over per-sample features of an injected extractor
  (``nn.Module``: images ``[N, C, H, W]`` -> ``[N, F]``), or Inception weights from a user path.

Weight files and folders from the command line are untrusted (`weights`): tensors only, never code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

PSNR_CAP_DB = 100.0
"""Reported PSNR of (nearly) identical images: ``min(psnr, PSNR_CAP_DB)``."""

ImageMetric = Callable[[Tensor, Tensor], Tensor]
TextImageMetric = Callable[[Tensor, Sequence[str]], Tensor]


def as_batch(images: Tensor) -> Tensor:
    """``[C, H, W]`` -> ``[1, C, H, W]``; ``[N, C, H, W]`` unchanged; float32 on CPU."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must be [C, H, W] or [N, C, H, W] (frames as N), got shape {tuple(images.shape)}")
    return images.detach().float().cpu()


def psnr(images: Tensor, refs: Tensor) -> float:
    """PSNR in dB of ``images`` vs ``refs`` (range 1), capped at `PSNR_CAP_DB`."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    value = float(peak_signal_noise_ratio(as_batch(images), as_batch(refs), data_range=1.0))
    return min(value, PSNR_CAP_DB)


def ssim(images: Tensor, refs: Tensor) -> float:
    """Mean SSIM of ``images`` vs ``refs`` (range 1, 11x11 Gaussian window)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(as_batch(images), as_batch(refs), data_range=1.0))


def load_lpips(spec: str | Path | ImageMetric | None) -> ImageMetric | None:
    """LPIPS as ``(images, refs) -> [N]``: ``spec`` itself if callable, the project's fixed LPIPS architecture
    (`lpips.LPIPS`, alex or vgg) with the tensors of a weights file (see `weights`: safetensors or a weights-only
    state dict; pickles and TorchScript are refused), or None. A missing path raises a FileNotFoundError saying
    what to pass."""
    if spec is None or callable(spec):
        return spec
    from .lpips import lpips_from_state_dict
    from .weights import ACCEPTED, existing_file, load_state_dict

    path = existing_file(spec, "LPIPS", "--lpips", f"the LPIPS weights ({ACCEPTED} of lpips.LPIPS(net='alex'))")
    return lpips_from_state_dict(load_state_dict(path, "LPIPS"), path)


CLIP_EXPECT = (
    "a local Hugging Face CLIP model folder (config.json, model.safetensors, tokenizer and preprocessor files)"
)


def _refuse_remote_code(path: Path) -> None:
    """A model folder that ships code (``*.py``, or an ``auto_map`` pointing at it) is refused: it is never run."""
    code = sorted(str(p.relative_to(path)) for p in path.rglob("*.py"))
    mapped = []
    for config in sorted(path.glob("*.json")):
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"CLIP folder {str(path)!r}: {config.name} is not valid JSON") from None
        if isinstance(data, dict) and "auto_map" in data:
            mapped.append(config.name)
    if code or mapped:
        raise ValueError(
            f"CLIP folder {str(path)!r} ships remote code ({', '.join(code + [f'auto_map in {m}' for m in mapped])}); "
            f"diffattn never runs code from a model folder: give {CLIP_EXPECT}"
        )


def load_clip_model(path: str | Path) -> tuple[Any, Any]:
    """``(CLIPModel, CLIPProcessor)`` from a local folder: transformers' own CLIP classes (never remote code),
    ``local_files_only=True`` and ``use_safetensors=True``. A ValueError / FileNotFoundError says what is wrong."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(
            f"CLIP weights not found at {str(folder)!r}: pass --clip PATH to {CLIP_EXPECT} (nothing is downloaded), "
            "or leave --clip out to skip CLIP"
        )
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"CLIP weights at {str(folder)!r} have no config.json: pass --clip PATH to {CLIP_EXPECT}"
        )
    _refuse_remote_code(folder)
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type != "clip":
        raise ValueError(f"CLIP folder {str(folder)!r} holds a {model_type!r} model, not 'clip': give {CLIP_EXPECT}")
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load CLIP from {str(folder)!r} ({first}); give {CLIP_EXPECT}") from None
    return model.eval(), processor


class _ClipFeatures(nn.Module):
    """The CLIP model as torchmetrics' ``CLIPScore`` calls it: ``get_image_features`` / ``get_text_features``
    returning the projected feature tensor (transformers 5 returns an output object whose ``pooler_output`` it is;
    torchmetrics 1.9 expects the tensor)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out: Any) -> Tensor:
        return out if isinstance(out, Tensor) else out.pooler_output

    def get_image_features(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def load_clip(spec: str | Path | TextImageMetric | None) -> TextImageMetric | None:
    """CLIP score as ``(images, prompts) -> [N]``: ``spec`` if callable, torchmetrics ``CLIPScore`` on the model
    and processor `load_clip_model` loads from a local folder, or None. A missing folder raises saying what to pass."""
    if spec is None or callable(spec):
        return spec
    model, processor = load_clip_model(spec)
    from torchmetrics.multimodal.clip_score import CLIPScore

    metric = CLIPScore(model_name_or_path=lambda: (_ClipFeatures(model), processor))

    def score(images: Tensor, prompts: Sequence[str]) -> Tensor:
        out = []
        for image, prompt in zip(as_batch(images), prompts):
            metric.reset()
            out.append(metric((image * 255).round().to(torch.uint8)[None], [prompt]).detach())
        return torch.stack(out)

    return score


class _Uint8Inception(nn.Module):
    """torchmetrics' Inception (expects uint8) on [0, 1] float images."""

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        self.inception = inception

    def forward(self, images: Tensor) -> Tensor:
        return self.inception((images * 255).round().to(torch.uint8))


FID_EXTRA = "pip install 'diffattn[fid]' (torch-fidelity, which provides the FID Inception architecture)"


def load_feature_extractor(spec: str | Path | nn.Module | None) -> nn.Module | None:
    """FID features ``[N, C, H, W] -> [N, F]``: ``spec`` if a module, or Inception (2048 features) from a weights
    path: the file's tensors (see `weights`: safetensors or a weights-only state dict; pickles and TorchScript are
    refused) go into torchmetrics' ``NoTrainInceptionV3`` architecture (needs torch-fidelity: the ``fid`` extra).
    None gives None."""
    if spec is None or isinstance(spec, nn.Module):
        return spec
    from .weights import ACCEPTED, existing_file, load_state_dict

    path = existing_file(spec, "Inception", "--inception", f"the FID Inception weights (pt_inception-2015-12-05 as "
                         f"{ACCEPTED})")  # fmt: skip
    state = load_state_dict(path, "Inception")  # the file is checked before anything else is imported
    import io

    from torchmetrics.image import fid as tm_fid

    if not tm_fid._TORCH_FIDELITY_AVAILABLE:
        raise ModuleNotFoundError(f"--inception (FID) needs torch-fidelity: {FID_EXTRA}")
    # torch-fidelity's constructor reads its weights with torch.load: hand it these already-checked tensors,
    # re-serialised in memory by us (plain tensors, so nothing from the user's file is ever unpickled)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        inception = tm_fid.NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=buffer
        )
    except RuntimeError as e:  # load_state_dict: missing / unexpected / misshapen tensors
        first = str(e).strip().splitlines()[0]
        raise ValueError(
            f"Inception weights {str(path)!r} do not fit the FID Inception architecture ({first})"
        ) from None
    return _Uint8Inception(inception)


@torch.no_grad()
def extract_features(extractor: nn.Module, images: Tensor) -> Tensor:
    """``[N, F]`` float64 features of ``images`` (a video's frames count as N samples)."""
    feats = extractor(as_batch(images))
    if feats.ndim == 1:
        feats = feats[None]
    return feats.reshape(feats.shape[0], -1).double()


class _Precomputed(nn.Module):
    """Identity 'extractor': lets torchmetrics' FID take features computed (and gathered) elsewhere."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def fid_from_features(real: Tensor, fake: Tensor) -> float:
    """FID between two feature sets ``[N, F]`` and ``[M, F]`` (N, M >= 2), by torchmetrics'
    ``FrechetInceptionDistance``: ``|mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))``."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be [N, F] with one F, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError(f"FID needs >= 2 samples per side, got {real.shape[0]} and {fake.shape[0]}")
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def quality_vs_reference(
    images: Tensor, refs: Tensor, lpips: ImageMetric | None = None
) -> dict[str, Any]:
    """PSNR, SSIM and (if given) LPIPS of ``images`` against ``refs``."""
    out: dict[str, Any] = {"psnr_db": psnr(images, refs), "ssim": ssim(images, refs), "lpips": None}
    if lpips is not None:
        with torch.no_grad():
            out["lpips"] = float(torch.as_tensor(lpips(as_batch(images), as_batch(refs))).float().mean())
    return out
