"""Image quality metrics, all on torchmetrics; weights only from what the user injects, never downloaded.

Images are float tensors in [0, 1]: one image ``[C, H, W]``, a batch ``[N, C, H, W]``, or a video
``[F, C, H, W]`` (its frames are scored as a batch).

- PSNR / SSIM: no weights. PSNR of identical images is capped at `PSNR_CAP_DB` (JSON has no inf).
- LPIPS: an injected callable ``(images, refs) -> [N]`` distances, or a path to a TorchScript module.
- CLIP score: an injected callable ``(images, prompts) -> [N]`` scores, or a path to a local Hugging
  Face CLIP model directory (torchmetrics ``CLIPScore(model_name_or_path=path)``).
- FID: torchmetrics ``FrechetInceptionDistance`` over per-sample features of an injected extractor
  (``nn.Module``: images ``[N, C, H, W]`` -> ``[N, F]``), or Inception weights from a user path.
"""

from __future__ import annotations

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


def _existing(path: str | Path, what: str, flag: str, expect: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"{what} weights not found at {str(p)!r}: pass {flag} PATH to {expect} (nothing is downloaded), "
            f"or leave {flag} out to skip {what}"
        )
    return p


def load_lpips(spec: str | Path | ImageMetric | None) -> ImageMetric | None:
    """LPIPS as ``(images, refs) -> [N]``: ``spec`` itself if callable, a TorchScript module from a path,
    or None. A missing path raises a FileNotFoundError saying what to pass."""
    if spec is None or callable(spec):
        return spec
    path = _existing(spec, "LPIPS", "--lpips", "a TorchScript LPIPS module (torch.jit.save of a module(img, ref))")
    return torch.jit.load(str(path), map_location="cpu").eval()


def load_clip(spec: str | Path | TextImageMetric | None) -> TextImageMetric | None:
    """CLIP score as ``(images, prompts) -> [N]``: ``spec`` if callable, torchmetrics ``CLIPScore`` on a
    local Hugging Face CLIP directory, or None. A missing directory raises saying what to pass."""
    if spec is None or callable(spec):
        return spec
    what = "a local Hugging Face CLIP model directory with config.json (e.g. a saved openai/clip-vit-large-patch14)"
    path = _existing(spec, "CLIP", "--clip", what)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"CLIP weights at {str(path)!r} have no config.json: pass --clip PATH to {what}")
    from torchmetrics.multimodal.clip_score import CLIPScore

    metric = CLIPScore(model_name_or_path=str(path))

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


def load_feature_extractor(spec: str | Path | nn.Module | None) -> nn.Module | None:
    """FID features ``[N, C, H, W] -> [N, F]``: ``spec`` if a module, Inception (2048 features) from
    a weights path (needs torch-fidelity), or None."""
    if spec is None or isinstance(spec, nn.Module):
        return spec
    path = _existing(spec, "Inception", "--inception", "the FID Inception weights file (pt_inception-2015-12-05)")
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        inception = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
        )
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"Inception FID needs torch-fidelity: pip install torch-fidelity ({e})") from e
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
