"""Quality of images of the tiny shapes model: a CNN scorer of the shape class, and pattern-FID on its features.

The scorer sees 32x32 images; larger ones are area-downsampled first (scenes are resolution independent, so a
correct 128 px image downsamples to the 32 px rendering of the same scene). ``score`` gives class accuracy
against the class named in each caption; ``PatternFeatures`` is the scorer up to its penultimate layer, usable
as torchmetrics' ``FrechetInceptionDistance(feature=PatternFeatures())``.

Images are ``[N, 3, H, W]`` floats in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import data as tiny_data

SCORER_RES = 32
FEATURES = 128
SCORER_FILE = "scorer.safetensors"


class ShapeScorer(nn.Module):
    """Small CNN: 3 conv stages (32->16->8->4 px), global average pool to :data:`FEATURES`, linear to classes."""

    def __init__(self) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU(),
                nn.Conv2d(o, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU(), nn.MaxPool2d(2),
            )

        self.body = nn.Sequential(block(3, 32), block(32, 64), block(64, FEATURES))
        self.head = nn.Linear(FEATURES, len(tiny_data.CLASSES))

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """Area-resize ``[N, 3, H, W]`` in [0, 1] to the scorer's 32x32 and map to [-1, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (SCORER_RES, SCORER_RES):
            x = F.interpolate(x, size=(SCORER_RES, SCORER_RES), mode="area")
        return x * 2 - 1

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[N, FEATURES]``."""
        return self.body(self.prepare(images)).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, classes]``."""
        return self.head(self.features(images))


def load_scorer(path: str | Path | None = None) -> ShapeScorer:
    """The trained scorer shipped with the tiny model (``scorer.safetensors`` beside its weights)."""
    from safetensors.torch import load_file

    from .pipeline import REBUILD_HINT, WEIGHTS_DIR

    f = Path(path) if path is not None else WEIGHTS_DIR / SCORER_FILE
    if not f.is_file():
        raise FileNotFoundError(f"scorer weights not found: {f}; {REBUILD_HINT}")
    try:
        state = load_file(str(f))
        model = ShapeScorer()
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise RuntimeError(f"scorer weights corrupted: {f} ({e}); {REBUILD_HINT}") from e
    return model.eval()


def labels_of(captions: list[str]) -> torch.Tensor:
    """Class index named by each caption ``[N]`` (``ValueError`` on an unknown word)."""
    return torch.tensor([tiny_data.parse_caption(c)[0] for c in captions])


@torch.no_grad()
def predict(images: torch.Tensor, scorer: ShapeScorer | None = None) -> torch.Tensor:
    """Predicted class ``[N]``."""
    scorer = scorer or load_scorer()
    return scorer(images).argmax(-1)


def caption_scorer() -> Callable[[torch.Tensor, Sequence[str]], torch.Tensor]:
    """``(images [N, 3, H, W], captions) -> [N] bool``: whether the scorer sees the class each caption names
    (the ``scorer`` of `diffattn.report.compare`); loads the scorer once."""
    scorer = load_scorer()
    return lambda images, captions: predict(images, scorer) == labels_of(list(captions))


def score(images: torch.Tensor, captions: list[str], scorer: ShapeScorer | None = None) -> float:
    """Fraction of images whose predicted class is the class named in their caption."""
    if len(captions) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(captions)} captions")
    return (predict(images, scorer) == labels_of(captions)).float().mean().item()


def per_class_accuracy(images: torch.Tensor, labels: torch.Tensor, scorer: ShapeScorer) -> dict[str, float]:
    """Accuracy per class name (classes absent from ``labels`` are left out)."""
    pred = predict(images, scorer)
    return {
        name: (pred[labels == i] == i).float().mean().item()
        for i, name in enumerate(tiny_data.CLASSES)
        if (labels == i).any()
    }


class PatternFeatures(nn.Module):
    """Feature extractor for torchmetrics' FID: scorer features of images given as uint8 or [0, 1] floats."""

    def __init__(self, scorer: ShapeScorer | None = None) -> None:
        super().__init__()
        self.scorer = scorer or load_scorer()
        self.num_features = FEATURES

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images
        return self.scorer.features(x).double()


def pattern_fid(fake: torch.Tensor, real: torch.Tensor, scorer: ShapeScorer | None = None) -> float:
    """FID between two image sets ``[N, 3, H, W]`` in [0, 1] on the scorer's penultimate features."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=PatternFeatures(scorer), normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())
