"""Tiny, offline diffusers pipelines with random weights for tests, benchmarks and the CLI.

Every pipeline is built from configs only (no files, no network): tokenizers are created
in memory and all models are randomly initialised with a fixed seed.  The models are small
enough that a two-step call takes well under a second on a laptop CPU, while the denoiser
still sees a non-trivial token grid (>= 8x8 image tokens for image families, >= 3 latent
frames of >= 6x6 tokens for video families) so sparse attention differs from dense.

Each family is one `TinySpec` in `TINY_SPECS`: its builder, default size, size multiple and the
pipeline keyword arguments it needs.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch
from diffusers import DiffusionPipeline

from .core import (
    build_cogvideox,
    build_flux,
    build_hunyuanvideo,
    build_ltx,
    build_pixart,
    build_sd,
    build_sd3,
    build_sdxl,
    build_wan,
)
from .encoders import TEXT_LEN
from .newer import (
    build_flux2_klein,
    build_flux_kontext,
    build_hunyuanvideo15,
    build_ltx2,
    build_qwenimage,
    build_wan22,
    kontext_call_kwargs,
)

__all__ = [
    "CORE_TINY_MODELS",
    "TINY_MODELS",
    "TINY_SPECS",
    "TinySpec",
    "build_tiny_pipeline",
    "tiny_call_kwargs",
    "tiny_output",
]

_PROMPT = "a red fox"


@dataclasses.dataclass(frozen=True)
class TinySpec:
    """One tiny family.

    name: ``"tiny-<family>"``.
    build: ``seed -> pipeline`` (random weights from the seed).
    height, width: default image size; ``frames``: number of frames for video families, else None.
    multiple: height and width must be multiples of this (VAE factor x patch size / UNet depth).
    call_kwargs: the family's own ``pipe(**kw)`` arguments (guidance, text length, ...).
    core: one of the ten original families that the family-parametrized test fixtures run over; the newer
    families (``core=False``) are exercised end to end by their own tests, to keep the suite's time bounded.
    sized_kwargs: ``(height, width) -> kwargs`` made fresh for every call at that output size (an input
    image, an area the pipeline rescales to), or None.
    """

    name: str
    build: Callable[[int], DiffusionPipeline]
    height: int
    width: int
    frames: int | None
    multiple: int
    call_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    core: bool = True
    sized_kwargs: Callable[[int, int], Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "call_kwargs", MappingProxyType(dict(self.call_kwargs)))


_TEXT = {"max_sequence_length": TEXT_LEN}
_LTX2 = {
    "guidance_scale": 3.0,
    "negative_prompt": "",
    "stg_scale": 0.0,
    "audio_stg_scale": 0.0,
    "modality_scale": 1.0,
    "audio_modality_scale": 1.0,
    **_TEXT,
}
_PIXART = {"guidance_scale": 5.0, "use_resolution_binning": False, "clean_caption": False, **_TEXT}

TINY_SPECS: dict[str, TinySpec] = {
    spec.name: spec
    for spec in (
        # latent 16x16; UNet attention at 16x16 and 8x8
        TinySpec("tiny-sd", build_sd, 32, 32, None, 8, {"guidance_scale": 5.0}),
        # latent 32x48; UNet attention at 16x24 and 8x12
        TinySpec("tiny-sdxl", build_sdxl, 64, 96, None, 8, {"guidance_scale": 5.0}),
        # latent 16x16, patch 2 -> 8x8 tokens
        TinySpec("tiny-pixart-alpha", lambda seed: build_pixart(seed, sigma=False), 32, 32, None, 8, _PIXART),
        # latent 24x16, patch 2 -> 12x8 tokens
        TinySpec("tiny-pixart-sigma", lambda seed: build_pixart(seed, sigma=True), 48, 32, None, 8, _PIXART),
        # latent 16x24, patch 2 -> 8x12 tokens
        TinySpec("tiny-sd3", build_sd3, 32, 48, None, 4, {"guidance_scale": 5.0, **_TEXT}),
        # latent 16x24, 2x2 packing -> 8x12 tokens; distilled guidance embedding (no CFG batch)
        TinySpec("tiny-flux", build_flux, 32, 48, None, 4, {"guidance_scale": 3.5, **_TEXT}),
        # latent 3x12x12, patch 2 -> 3x6x6 tokens
        TinySpec("tiny-cogvideox", build_cogvideox, 96, 96, 9, 16, {"guidance_scale": 6.0, **_TEXT}),
        # latent 3x12x16, patch (1,2,2) -> 3x6x8 tokens
        TinySpec("tiny-wan", build_wan, 96, 128, 9, 16, {"guidance_scale": 5.0, "negative_prompt": "", **_TEXT}),
        # latent 3x8x8, patch 1 -> 3x8x8 tokens; distilled guidance embedding (no CFG batch)
        TinySpec(
            "tiny-hunyuanvideo",
            build_hunyuanvideo,
            64,
            64,
            9,
            16,
            {"guidance_scale": 6.0, "prompt_template": {"template": "{}", "crop_start": 0}, **_TEXT},
        ),
        # latent 3x6x8 (VAE /16 spatial, /4 temporal), patch 1
        TinySpec("tiny-ltx", build_ltx, 96, 128, 9, 32, {"guidance_scale": 3.0, "negative_prompt": "", **_TEXT}),
        # --- newer families (core=False), with their own end-to-end tests
        # Qwen text encoders (`newer`).
        # latent 16x20 (VAE /4), 2x2 packing -> 8x10 tokens; true CFG: separate cond / uncond calls
        TinySpec(
            "tiny-qwenimage",
            build_qwenimage,
            64,
            80,
            None,
            8,
            {"true_cfg_scale": 4.0, "negative_prompt": " ", **_TEXT},
            core=False,
        ),
        # latent 3x6x8 (VAE /4 spatial, /2 temporal: 5 frames), patch 1; CFG through the pipeline's guider
        TinySpec("tiny-hunyuanvideo15", build_hunyuanvideo15, 24, 32, 5, 4, core=False),
        # Flux2KleinPipeline: latent 16x20 (VAE /2), 2x2 patchified -> 8x10 tokens; real CFG (not distilled)
        TinySpec(
            "tiny-flux2",
            build_flux2_klein,
            32,
            40,
            None,
            4,
            {"guidance_scale": 4.0, "text_encoder_out_layers": (1, 2), **_TEXT},
            core=False,
        ),
        # tiny-wan's latent grid 3x6x8 tokens; two experts: step 0 runs transformer, step 1 transformer_2
        TinySpec(
            "tiny-wan22",
            build_wan22,
            96,
            128,
            9,
            16,
            {"guidance_scale": 5.0, "negative_prompt": "", **_TEXT},
            core=False,
        ),
        # target 8x12 tokens (as tiny-flux) + 8x8 reference-image tokens appended to the latent stream
        TinySpec(
            "tiny-flux-kontext",
            build_flux_kontext,
            32,
            48,
            None,
            4,
            {"guidance_scale": 3.5, "_auto_resize": False, **_TEXT},
            core=False,
            sized_kwargs=kontext_call_kwargs,
        ),
        # latent 3x8x8 (video VAE /4 in space and time), patch 1; the audio stream stays dense. Guidance is CFG
        # alone: STG and modality isolation would add two more transformer passes per step
        TinySpec("tiny-ltx2", build_ltx2, 32, 32, 9, 32, _LTX2, core=False),
    )
}
TINY_MODELS: tuple[str, ...] = tuple(TINY_SPECS)
CORE_TINY_MODELS: tuple[str, ...] = tuple(name for name, spec in TINY_SPECS.items() if spec.core)


def _spec(name: str) -> TinySpec:
    if name not in TINY_SPECS:
        raise ValueError(f"Unknown tiny model {name!r}; expected one of: {', '.join(TINY_MODELS)}")
    return TINY_SPECS[name]


# --------------------------------------------------------------------------- public API


def build_tiny_pipeline(name: str, *, seed: int = 0) -> DiffusionPipeline:
    """Build the tiny pipeline ``name`` (one of ``TINY_MODELS``): fp32, CPU, eval mode, random weights.

    Weights depend only on ``seed``; the global torch RNG state is restored afterwards.
    """
    spec = _spec(name)
    with torch.random.fork_rng(devices=[]):
        pipe = spec.build(seed)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def tiny_call_kwargs(
    name: str, *, seed: int = 0, height: int | None = None, width: int | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``pipe(**kw)``: 2 steps, default size, fresh CPU generator, ``output_type="pt"``.

    ``height``/``width`` override the family default and must be multiples of the family's
    ``TinySpec.multiple`` (4 to 32); video families use ``TinySpec.frames`` frames (3 latent frames).
    """
    spec = _spec(name)
    height = height or spec.height
    width = width or spec.width
    if height % spec.multiple or width % spec.multiple:
        raise ValueError(f"{name}: height and width must be multiples of {spec.multiple}, got {height}x{width}")
    kw: dict[str, Any] = {
        "prompt": _PROMPT,
        "num_inference_steps": 2,
        "height": height,
        "width": width,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "pt",
    }
    if spec.frames is not None:
        kw["num_frames"] = spec.frames
    kw.update(copy.deepcopy(dict(spec.call_kwargs)))  # fresh nested dicts: a pipeline may mutate them
    if spec.sized_kwargs is not None:
        kw.update(spec.sized_kwargs(height, width))
    return kw


def tiny_output(pipe: DiffusionPipeline, name: str, **overrides: Any) -> torch.Tensor:
    """Run ``pipe`` with ``tiny_call_kwargs(name)`` updated by ``overrides``; return images/frames as float.

    Image families give ``[B, C, H, W]``, video families ``[B, F, C, H, W]``.
    """
    size = {k: overrides.pop(k) for k in ("seed", "height", "width") if k in overrides}
    kw = tiny_call_kwargs(name, **size)
    kw.update(overrides)
    kw["return_dict"] = False
    out = pipe(**kw)[0]
    if not isinstance(out, torch.Tensor):
        import numpy as np

        out = torch.from_numpy(np.asarray(out))
    return out.float()
