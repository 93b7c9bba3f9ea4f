"""High-resolution generation with a diffusers pipeline and a diffattn method.

- **UNets** (SD 1.5/2.1, SDXL): one stage at the target, HiDiffusion style: ``msw`` on the
  highest-resolution blocks (its preset) and, with ``raunet=True``, RAU-Net on the same handle.
- **DiTs** (PixArt, FLUX, SD3, Wan, ...): two stages, FreeSwim's recipe. Generate at the training
  resolution with dense attention; upsample the latents to the target; re-noise them to ``strength``
  (0.7 as FreeSwim) and run the remaining ``int(steps * strength)`` steps at the target with the method:
  ``freeswim`` where it applies (window = the token grid stage 1 actually had), else ``gna`` with a
  sliding window of that grid (stride 1).

Pixel-space pipelines (no VAE: the embedded shapes model, diffusers' DDPM-style pipelines) have no
latents apart from the image: stage 1 asks for ``output_type="np"`` (every diffusers pipeline has it, while
"latent" is not universal), maps the ``[0, 1]`` image to the model's ``[-1, 1]`` space and upsamples that;
the record keeps the stage-1 result (`HighResRecord.base`), so a caller can show the plain upscale beside the
refined image.

Upsampling is done on the latents (bicubic, per frame for video), not by decoding, resizing and
re-encoding as FreeSwim's script does: it needs no VAE pass at the target resolution (the costly part
for video, which FreeSwim runs tiled and offloaded), works the same for every family through the
pipeline's own latent format, and the re-noise at strength 0.7 regenerates the detail either path
loses. Re-noising uses the pipeline's own scheduler: its ``set_timesteps`` is wrapped for the second
call (an undo record) to keep the last ``int(n * strength)`` steps, as diffusers' img2img pipelines do,
and to noise the upsampled latents to the first kept step.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from ..methods import get_method
from ..models import find_adapter
from ..models.denoisers import first_denoiser
from ..patch import SetAttr, apply_attention
from ..patch.records import apply_all, undo_all
from .raunet import apply_raunet


@dataclasses.dataclass
class StageRecord:
    """One stage: what ran, at which size, for how long, and the handle's per-module call counts."""

    name: str
    height: int
    width: int
    steps: int  # denoising steps actually run
    seconds: float
    method: str
    knobs: dict[str, Any]
    stats: dict[str, dict[str, int]]
    num_frames: int | None = None


@dataclasses.dataclass
class HighResRecord:
    """What `generate_highres` / `generate_highres_video` did."""

    stages: list[StageRecord]
    strength: float | None
    raunet: bool
    upsample: str | None  # "latent-bicubic" / "pixel-bicubic" for two stages, None for one
    # two stages: stage 1's result in the denoiser's space, unpacked ([B, C, h, w] / [B, C, F, h, w]; pixel
    # space: the image in [-1, 1]); left out of `to_dict`
    base: Tensor | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) if f.name != "stages" else [dataclasses.asdict(s) for s in self.stages]
                for f in dataclasses.fields(self) if f.name != "base"}


def _check_strength(strength: float) -> float:
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0.0 < strength <= 1.0:
        raise ValueError(f"strength={strength!r} must be in (0, 1]: the fraction of the steps re-run at the target")
    return float(strength)


def training_size(pipe: Any) -> tuple[int, int]:
    """(height, width) in pixels the pipeline's model was trained at: the ``__call__`` defaults (Wan), the
    pipeline's default sample size (FLUX, SD3), or the denoiser's ``sample_size`` (UNets, PixArt)."""
    params = inspect.signature(pipe.__call__).parameters
    h, w = (params[k].default if k in params else None for k in ("height", "width"))
    if isinstance(h, int) and isinstance(w, int):
        return h, w
    vae = _scale_factor(pipe)
    size = getattr(pipe, "default_sample_size", None) or getattr(first_denoiser(pipe).config, "sample_size", None)
    if isinstance(size, int | tuple | list):
        sh, sw = (size, size) if isinstance(size, int) else size
        return int(sh) * vae, int(sw) * vae
    raise ValueError(f"cannot tell the training resolution of {type(pipe).__name__}; pass base_height/base_width")


def _check_target(height: int, width: int, base: tuple[int, int], what: str) -> None:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive int (pixels)")
    if height < base[0] or width < base[1] or (height, width) == tuple(base):
        raise ValueError(
            f"target {height}x{width} must be at least the {what} {base[0]}x{base[1]} on both sides and larger on "
            "one: high-resolution generation upsamples; generate smaller images with the pipeline itself"
        )


# ---- latent formats -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Latents:
    """How one pipeline family lays out its latents: unpack to ``[B, C, h, w]`` / ``[B, C, F, h, w]``,
    the latent size of a pixel size, and pack back."""

    size: Callable[[int, int], tuple[int, int]]
    unpack: Callable[[Tensor, int, int], Tensor]
    pack: Callable[[Tensor], Tensor]


def pixel_space(pipe: Any) -> bool:
    """True for a pipeline without a VAE, whose denoiser works on the image itself."""
    has_factor = any(getattr(pipe, a, None) for a in ("vae_scale_factor", "vae_scale_factor_spatial"))
    return getattr(pipe, "vae", None) is None and not has_factor


def _scale_factor(pipe: Any) -> int:
    """Pixels per latent position: 1 in pixel space, else the VAE's spatial factor (8 if the pipeline hides it)."""
    if pixel_space(pipe):
        return 1
    return getattr(pipe, "vae_scale_factor_spatial", None) or getattr(pipe, "vae_scale_factor", None) or 8


def _latent_format(pipe: Any) -> _Latents:
    if hasattr(pipe, "_pack_latents") and hasattr(pipe, "_unpack_latents"):  # FLUX: 2x2 packed tokens
        vae = pipe.vae_scale_factor

        def size(h: int, w: int) -> tuple[int, int]:
            return 2 * (h // (vae * 2)), 2 * (w // (vae * 2))

        def pack(x: Tensor) -> Tensor:
            return pipe._pack_latents(x, x.shape[0], x.shape[1], x.shape[2], x.shape[3])

        return _Latents(size, lambda x, h, w: pipe._unpack_latents(x, h, w, vae), pack)
    vae = _scale_factor(pipe)
    return _Latents(lambda h, w: (h // vae, w // vae), lambda x, h, w: x, lambda x: x)


def upsample_latents(latents: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic resize of ``[B, C, h, w]`` or, per frame, ``[B, C, F, h, w]`` latents to ``size``."""
    if latents.dim() == 4:
        return F.interpolate(latents.float(), size=size, mode="bicubic").to(latents.dtype)
    b, c, f, h, w = latents.shape
    frames = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # [B*F, C, h, w]
    up = F.interpolate(frames.float(), size=size, mode="bicubic").to(latents.dtype)
    return up.reshape(b, f, c, *size).permute(0, 2, 1, 3, 4).contiguous()  # [B, C, F, H, W]


def _renoise_records(pipe: Any, latents: Tensor, strength: float, generator: Any) -> list[SetAttr]:
    """Wrap ``pipe.scheduler.set_timesteps`` for one call: keep the last ``int(n * strength)`` steps
    (timesteps and sigmas alike, as diffusers' img2img pipelines) and noise ``latents`` in place to the
    first kept step. In place, because pipelines take ``latents`` before (FLUX) or after (PixArt, Wan)
    they set the timesteps, and ``.to()`` of a tensor already on the right device and dtype is itself."""
    scheduler = pipe.scheduler
    original = scheduler.set_timesteps
    clean = latents.clone()

    @functools.wraps(original)  # pipelines read its signature (e.g. whether it takes `sigmas`)
    def set_timesteps(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        order = getattr(scheduler, "order", 1)
        n = len(scheduler.timesteps) // order
        keep = min(int(n * strength), n)
        if keep < 1:
            raise ValueError(
                f"strength={strength} keeps int({n} * {strength}) = 0 of {n} steps; raise strength or the steps"
            )
        start = (n - keep) * order
        scheduler.timesteps = scheduler.timesteps[start:]
        sigmas = getattr(scheduler, "sigmas", None)
        if isinstance(sigmas, Tensor) and len(sigmas) >= len(scheduler.timesteps) + start:
            scheduler.sigmas = sigmas[start:]
        t0 = scheduler.timesteps[:1]
        # one generator per image draws that image's noise, as the pipeline drew its starting noise
        noise = randn_tensor(clean.shape, generator=generator, dtype=torch.float32).to(clean.device, clean.dtype)
        if hasattr(scheduler, "scale_noise"):  # flow matching: (1 - sigma) x0 + sigma noise
            noised = scheduler.scale_noise(clean, t0, noise)
        else:
            noised = scheduler.add_noise(clean, noise, t0)
        latents.copy_(noised)

    return [SetAttr(scheduler, "set_timesteps", set_timesteps)]


# ---- stages ---------------------------------------------------------------------------------------


def _stats(handle: Any) -> dict[str, dict[str, int]]:
    return {name: dataclasses.asdict(s) for name, s in handle.stats().items()}


def default_method(pipe: Any) -> str:
    """The method ``generate_highres`` uses when none is given: msw on UNets; on DiTs freeswim where it
    applies (separate cross-attention), else sliding GNA."""
    if hasattr(pipe, "unet"):
        return "msw"
    freeswim = get_method("freeswim")
    supported = freeswim(freeswim.make_config(train_grid=1)).supports(find_adapter(first_denoiser(pipe))) is None
    return "freeswim" if supported else "gna"


def _default_knobs(method: str, grid: tuple[int, ...]) -> dict[str, Any]:
    """The stage-1 token grid as freeswim's training grid, or as sliding GNA's window."""
    spatial = tuple(grid[-2:])
    if method == "freeswim":
        return {"train_grid": spatial}
    return {"window": (*grid[:-2], *spatial) if len(grid) == 3 else spatial, "stride": 1}


def _token_grid(pipe: Any, run: Callable[[], Any]) -> tuple[Any, tuple[int, ...]]:
    """Run ``run()`` and return its result and the token grid the denoiser's first call had."""
    denoiser = first_denoiser(pipe)
    adapter = find_adapter(denoiser)
    seen: list[tuple[int, ...]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if not seen:
            seen.append(tuple(adapter.read_layout(module, adapter.bind(module, args, kwargs)).grid))

    removable = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out = run()
    finally:
        removable.remove()
    return out, seen[0]


def _two_stage(
    pipe: Any,
    prompt: Any,
    height: int,
    width: int,
    *,
    num_frames: int | None,
    method: str | None,
    knobs: dict[str, Any] | None,
    strength: float,
    num_inference_steps: int,
    base_height: int | None,
    base_width: int | None,
    generator: Any,
    output_type: str,
    progress: Callable[[str], None] | None,
    call_kwargs: dict[str, Any],
    layers: Any = None,
    backend: str = "auto",
) -> tuple[Any, HighResRecord]:
    say = progress or (lambda message: None)
    strength = _check_strength(strength)
    trained = training_size(pipe)
    base = (base_height or trained[0], base_width or trained[1])
    _check_target(height, width, base, "base (training) resolution")
    if int(num_inference_steps * strength) < 1:
        raise ValueError(
            f"strength={strength} keeps int({num_inference_steps} * {strength}) = 0 of {num_inference_steps} steps; "
            "raise strength or the steps"
        )
    if method is not None:  # a bad method name or knob fails here, before any generation
        cls = get_method(method)
        if knobs:
            cls.make_config(**knobs)
    frames = {} if num_frames is None else {"num_frames": num_frames}
    fmt = _latent_format(pipe)
    common = dict(prompt=prompt, num_inference_steps=num_inference_steps, **frames, **call_kwargs)

    pixels = pixel_space(pipe)
    say(f"stage 1/2: {base[0]}x{base[1]} (training resolution), dense, {num_inference_steps} steps")
    start = time.perf_counter()
    out, grid = _token_grid(
        pipe,
        lambda: pipe(height=base[0], width=base[1], output_type="np" if pixels else "latent", generator=generator,
                     **common),
    )
    latents = out[0] if isinstance(out, tuple) else getattr(out, "images", None)
    if latents is None:
        latents = out.frames
    if pixels:  # [B, h, w, C] in [0, 1] -> the model's [-1, 1] pixel space, [B, C, h, w]
        image = torch.as_tensor(latents).float().permute(0, 3, 1, 2)
        latents = (image * 2 - 1).to(getattr(first_denoiser(pipe), "device", image.device))
    stage1 = StageRecord("base", base[0], base[1], num_inference_steps, time.perf_counter() - start, "dense", {}, {})
    stage1.num_frames = num_frames
    small = fmt.unpack(latents, base[0], base[1])  # [B, C, h, w] or [B, C, F, h, w]
    up = fmt.pack(upsample_latents(small, fmt.size(height, width))).contiguous()

    if method is None:
        method = default_method(pipe)
        knobs = knobs or _default_knobs(method, grid)
    knobs = dict(knobs or {})
    handle = apply_attention(pipe, method, layers=layers, backend=backend, **knobs)
    done = []
    try:
        done = apply_all(_renoise_records(pipe, up, strength, generator))
        keep = min(int(num_inference_steps * strength), num_inference_steps)
        say(f"stage 2/2: {height}x{width}, {method} {knobs}, strength {strength}: {keep}/{num_inference_steps} steps")
        start = time.perf_counter()
        result = pipe(height=height, width=width, latents=up, output_type=output_type, generator=generator, **common)
        seconds = time.perf_counter() - start
    finally:
        undo_all(done)
        handle.remove()
    steps = min(int(num_inference_steps * strength), num_inference_steps)
    stage2 = StageRecord("refine", height, width, steps, seconds, method, knobs, _stats(handle), num_frames)
    upsample = "pixel-bicubic" if pixels else "latent-bicubic"
    return result, HighResRecord([stage1, stage2], strength, False, upsample, base=small)


def generate_highres(
    pipe: Any,
    prompt: Any,
    height: int,
    width: int,
    *,
    method: str | None = None,
    knobs: dict[str, Any] | None = None,
    strength: float = 0.7,
    raunet: bool = False,
    num_inference_steps: int = 30,
    base_height: int | None = None,
    base_width: int | None = None,
    generator: Any = None,
    output_type: str = "pil",
    progress: Callable[[str], None] | None = None,
    layers: Any = None,
    backend: str = "auto",
    **call_kwargs: Any,
) -> tuple[Any, HighResRecord]:
    """Generate ``height x width`` images above the model's training resolution.

    Args:
        pipe: a diffusers text-to-image pipeline (UNet or DiT).
        method: the attention method; None = ``msw`` on UNets, ``freeswim`` on DiTs with separate
            cross-attention, ``gna`` (sliding window of the stage-1 token grid) on joint-attention DiTs.
        knobs: the method's knobs (None = its preset, or the stage-1 grid for the DiT defaults).
        strength: DiTs: fraction of the steps re-run at the target after re-noising, in (0, 1].
        raunet: UNets: add HiDiffusion's RAU-Net (an error on DiTs).
        base_height, base_width: DiTs: stage-1 size (default: the training resolution).
        progress: called with one line as each stage starts (the pipeline shows its own progress bar).
        layers, backend: passed to ``apply_attention`` (which modules; which kernel backend).
        **call_kwargs: passed to every pipeline call (``guidance_scale``, ``negative_prompt``, ...).

    Returns:
        ``(pipeline output, HighResRecord)``; the pipeline is left exactly as it was.
    """
    if not isinstance(raunet, bool):
        raise TypeError(f"raunet={raunet!r} must be True or False")
    if not hasattr(pipe, "unet"):
        if raunet:
            raise ValueError(f"raunet=True needs a UNet pipeline; {type(pipe).__name__} is a DiT (two stages instead)")
        return _two_stage(
            pipe,
            prompt,
            height,
            width,
            num_frames=None,
            method=method,
            knobs=knobs,
            strength=strength,
            num_inference_steps=num_inference_steps,
            base_height=base_height,
            base_width=base_width,
            generator=generator,
            output_type=output_type,
            progress=progress,
            call_kwargs=call_kwargs,
            layers=layers,
            backend=backend,
        )
    _check_strength(strength)
    _check_target(height, width, training_size(pipe), "training resolution")
    method = method or default_method(pipe)
    handle = apply_attention(pipe, method, layers=layers, backend=backend, **(knobs or {}))
    if progress:
        progress(f"one stage: {height}x{width}, {method}{' + RAU-Net' if raunet else ''}, {num_inference_steps} steps")
    try:
        if raunet:
            apply_raunet(pipe, handle)
        start = time.perf_counter()
        result = pipe(
            prompt=prompt,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            generator=generator,
            output_type=output_type,
            **call_kwargs,
        )
        seconds = time.perf_counter() - start
    finally:
        handle.remove()
    used = dict(knobs or dataclasses.asdict(handle.config))
    stage = StageRecord("target", height, width, num_inference_steps, seconds, method, used, _stats(handle))
    return result, HighResRecord([stage], None, raunet, None)


def generate_highres_video(
    pipe: Any,
    prompt: Any,
    height: int,
    width: int,
    num_frames: int,
    *,
    method: str | None = None,
    knobs: dict[str, Any] | None = None,
    strength: float = 0.7,
    num_inference_steps: int = 50,
    base_height: int | None = None,
    base_width: int | None = None,
    generator: Any = None,
    output_type: str = "np",
    progress: Callable[[str], None] | None = None,
    **call_kwargs: Any,
) -> tuple[Any, HighResRecord]:
    """FreeSwim's video recipe (Wan first): ``num_frames`` frames at the training resolution, latents
    upsampled per frame, re-noised to ``strength`` and refined at ``height x width`` with ``freeswim``
    (window = the stage-1 token grid per frame). Same arguments and return as `generate_highres`."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames={num_frames!r} must be an int >= 1")
    if hasattr(pipe, "unet"):
        raise ValueError(f"generate_highres_video needs a video DiT pipeline; {type(pipe).__name__} has a UNet")
    return _two_stage(
        pipe,
        prompt,
        height,
        width,
        num_frames=num_frames,
        method=method,
        knobs=knobs,
        strength=strength,
        num_inference_steps=num_inference_steps,
        base_height=base_height,
        base_width=base_width,
        generator=generator,
        output_type=output_type,
        progress=progress,
        call_kwargs=call_kwargs,
    )


__all__ = [
    "HighResRecord",
    "StageRecord",
    "generate_highres",
    "generate_highres_video",
    "pixel_space",
    "training_size",
    "upsample_latents",
]
