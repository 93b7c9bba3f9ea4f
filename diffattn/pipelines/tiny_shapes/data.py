"""Procedural shapes dataset for the embedded tiny model: RGB images with a caption each.

A scene is a handful of normalized numbers (class, colours, centre, size, period, phase). Rendering evaluates a
signed distance per pixel centre, so the same scene exists at any resolution (32, 64, 128, 256 px) with
one-pixel anti-aliased edges. Every scene has *global* structure (one object, one period): a model that only
sees a local window draws repeated objects or broken stripes, which the scorer and pattern-FID pick up.

Images are ``[N, 3, H, W]`` floats in ``[0, 1]``. Everything is a batched torch op, so drawing a training batch
costs far less than a training step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CLASSES: tuple[str, ...] = ("circle", "square", "ring", "horizontal stripes", "vertical stripes", "checkerboard")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.75, 0.2),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1),
    "cyan": (0.1, 0.85, 0.9),
    "magenta": (0.9, 0.15, 0.8),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
# Words that link class and colours in captions; together with class and colour words they are the vocabulary.
FILLER_WORDS: tuple[str, ...] = ("a", "on", "and", "background")
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(FILLER_WORDS + COLOUR_NAMES + tuple(w for c in CLASSES for w in c.split()))
)
_COLOUR_TABLE = torch.tensor([COLOURS[c] for c in COLOUR_NAMES])


@dataclass(frozen=True)
class Scenes:
    """A batch of N scenes in normalized image coordinates (x right, y down, both in [0, 1]).

    ``label``/``fg``/``bg``: [N] long (class index, colour indices); ``centre``: [N, 2] (x, y); ``size``: [N]
    (radius, half side or period); ``ratio``: [N] (ring thickness / radius); ``phase``: [N, 2] in [0, 1).
    """

    label: torch.Tensor
    fg: torch.Tensor
    bg: torch.Tensor
    centre: torch.Tensor
    size: torch.Tensor
    ratio: torch.Tensor
    phase: torch.Tensor

    def __len__(self) -> int:
        return self.label.shape[0]


def caption(label: int, fg: int, bg: int) -> str:
    """The caption of one scene, e.g. ``"a red ring on a blue background"``."""
    cls, f, b = CLASSES[label], COLOUR_NAMES[fg], COLOUR_NAMES[bg]
    if cls == "checkerboard":
        return f"a {f} and {b} checkerboard"
    if cls.endswith("stripes"):
        return f"{f} {cls} on a {b} background"
    return f"a {f} {cls} on a {b} background"


def captions(scenes: Scenes) -> list[str]:
    """Captions of a batch of scenes."""
    return [caption(int(c), int(f), int(b)) for c, f, b in zip(scenes.label, scenes.fg, scenes.bg)]


def parse_caption(text: str) -> tuple[int, int, int]:
    """(class, foreground, background) indices named by a caption; raises ``ValueError`` naming a bad word.

    Accepts any order of words as long as every word is in :data:`VOCABULARY`, exactly one class is named and
    one or two colours are named (foreground first; a single colour gets the first different default background).
    """
    words = text.lower().replace(",", " ").split()
    unknown = [w for w in words if w not in VOCABULARY]
    if unknown:
        raise ValueError(
            f"unknown word {unknown[0]!r} in caption {text!r}; the tiny model knows classes {list(CLASSES)}, "
            f"colours {list(COLOUR_NAMES)} and the words {list(FILLER_WORDS)}"
        )
    joined = " ".join(words)
    found = [i for i, c in enumerate(CLASSES) if (" " in c and c in joined) or (" " not in c and c in words)]
    if len(found) != 1:
        raise ValueError(f"caption {text!r} must name exactly one class of {list(CLASSES)}, found {len(found)}")
    colours = [COLOUR_NAMES.index(w) for w in words if w in COLOURS]
    if not 1 <= len(colours) <= 2 or (len(colours) == 2 and colours[0] == colours[1]):
        raise ValueError(f"caption {text!r} must name one or two different colours of {list(COLOUR_NAMES)}")
    fg = colours[0]
    bg = colours[1] if len(colours) == 2 else (COLOUR_NAMES.index("black") if fg != 7 else 6)
    return found[0], fg, bg


def sample_scenes(n: int, seed: int, *, labels: torch.Tensor | None = None) -> Scenes:
    """N random scenes, deterministic by ``seed`` (its own CPU generator). ``labels`` fixes the classes."""
    if n <= 0:
        raise ValueError(f"n must be >= 1, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(n, 8, generator=g)
    label = torch.randint(len(CLASSES), (n,), generator=g) if labels is None else labels.long().reshape(n)
    fg = torch.randint(len(COLOUR_NAMES), (n,), generator=g)
    bg = (fg + torch.randint(1, len(COLOUR_NAMES), (n,), generator=g)) % len(COLOUR_NAMES)  # never fg
    # Sizes are per class: radius / half side for objects, period for stripes, cell side for checkerboards.
    lo = torch.tensor([0.16, 0.13, 0.22, 0.18, 0.18, 0.25])[label]
    hi = torch.tensor([0.32, 0.28, 0.38, 0.36, 0.36, 0.45])[label]
    size = lo + (hi - lo) * u[:, 0]
    margin = size.clamp(max=0.35)
    centre = margin[:, None] + (1 - 2 * margin[:, None]) * u[:, 1:3]
    ratio = 0.35 + 0.2 * u[:, 3]
    return Scenes(label, fg, bg, centre, size, ratio, u[:, 4:6])


def _stripe_sdf(coord: torch.Tensor, period: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Signed distance (negative inside) to the boundaries of stripes of the given period, along one axis."""
    u = coord / period + phase
    return -period * torch.asin(torch.sin(2 * math.pi * u).clamp(-1, 1)) / (2 * math.pi)


def render(scenes: Scenes, height: int, width: int | None = None) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` in ``[0, 1]``; edges anti-aliased over one pixel at any resolution."""
    width = height if width is None else width
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    n = len(scenes)
    ys = ((torch.arange(height) + 0.5) / height).view(1, height, 1)
    xs = ((torch.arange(width) + 0.5) / width).view(1, 1, width)
    cx, cy = scenes.centre[:, 0].view(n, 1, 1), scenes.centre[:, 1].view(n, 1, 1)
    s = scenes.size.view(n, 1, 1)
    dx, dy = xs - cx, ys - cy
    r = torch.sqrt(dx * dx + dy * dy)
    px, py = scenes.phase[:, 0].view(n, 1, 1), scenes.phase[:, 1].view(n, 1, 1)
    sx, sy = _stripe_sdf(xs, s, px), _stripe_sdf(ys, s, py)
    thick = (s * scenes.ratio.view(n, 1, 1)) / 2
    sdf = torch.stack(
        [
            (r - s).expand(n, height, width),
            torch.maximum(dx.abs(), dy.abs()) - s,
            (r - (s - thick)).abs() - thick,
            sy.expand(n, height, width),
            sx.expand(n, height, width),
            torch.where(sx * sy > 0, -1.0, 1.0) * torch.minimum(sx.abs(), sy.abs()),
        ]
    )  # [classes, N, H, W]
    sdf = sdf.gather(0, scenes.label.view(1, n, 1, 1).expand(1, n, height, width))[0]
    pixel = 1.0 / min(height, width)
    alpha = (0.5 - sdf / pixel).clamp(0, 1).unsqueeze(1)  # [N, 1, H, W]
    fg = _COLOUR_TABLE[scenes.fg].view(n, 3, 1, 1)
    bg = _COLOUR_TABLE[scenes.bg].view(n, 3, 1, 1)
    return bg + alpha * (fg - bg)


def make_batch(
    n: int, seed: int, resolution: int = 32, *, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """(images [N, 3, R, R], captions, labels [N]) for ``n`` scenes drawn with ``seed`` (``labels`` fixes classes)."""
    scenes = sample_scenes(n, seed, labels=labels)
    return render(scenes, resolution), captions(scenes), scenes.label
