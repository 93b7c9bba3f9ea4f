"""What a command runs, from its parsed arguments: the pipeline and its call arguments, the method's knobs, the
prompt and config files, and where ``apply_attention`` patches. Every input check happens here, before any model is
loaded or run (`before_load`) or, for what needs the model's shape (the memory a request needs), after it is loaded
and before anything is generated (`check_memory`). Nothing is written until every check has passed."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..pipelines.load import EMBEDDED, load_pipeline
from ..report.runner import RunConfig
from ..tiny import TINY_MODELS, tiny_call_kwargs
from .args import method_knobs, torch_dtype

#: prompt of hub models when the command line names none
HUB_PROMPT = "a red fox in the snow, highly detailed"
#: share of the available memory a request may plan to use (the rest: the weights, the allocator, the OS)
MEMORY_SHARE = 0.9


# --- checks before anything is loaded -------------------------------------------------------------------------


def check_out(path: Path, flag: str = "--out") -> None:
    """``path`` is (or can be created as) a writable folder; a one-line error otherwise. Creates nothing."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{flag} {str(path)!r} is a file, not a folder: give a folder (created if missing)")
    existing = path
    while not existing.exists():  # the nearest existing ancestor must let us create the rest
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{flag} {str(path)!r}: {str(existing)!r} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created ({str(existing)!r} is not writable)"
        raise PermissionError(f"{flag} {str(path)!r} {what}: give a folder you can write to")


def check_device(name: str) -> torch.device:
    """``name`` as a torch device; a ValueError if it is CUDA and none is available."""
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__}); use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: accepted cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


def available_bytes(device: torch.device) -> int:
    """Memory free for a request on ``device``: CUDA's free memory, else the system's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _refuse_if_too_big(need: int, what: str, device: torch.device) -> None:
    have = available_bytes(device)
    if need > MEMORY_SHARE * have:
        raise MemoryError(
            f"{what} needs about {_gib(need)}, more than the {_gib(have)} available on {device.type}: "
            f"lower the size (accepted: requests that fit in {MEMORY_SHARE:.0%} of the available memory)"
        )


def _size_text(args: argparse.Namespace) -> str:
    parts = [f"--{k} {getattr(args, k)}" for k in ("height", "width", "frames") if getattr(args, k, None) is not None]
    return " ".join(parts) or "this request"


def before_load(args: argparse.Namespace) -> None:
    """Checks that need no model: the output folder, the device, and a lower bound on the memory of the request
    (its decoded images in float32), so an absurd size fails in a second, not after the model loads."""
    if isinstance(getattr(args, "out", None), Path):
        check_out(args.out)
    device = check_device(getattr(args, "device", None) or "cpu")
    height, width = getattr(args, "height", None), getattr(args, "width", None)
    if height is not None or width is not None:
        pixels = (height or width) * (width or height) * (getattr(args, "frames", None) or 1)
        _refuse_if_too_big(3 * 4 * pixels, f"{_size_text(args)} (its decoded image alone)", device)


# --- the memory a request needs, from the loaded model's shape ----------------------------------------------------


def _axes(value: Any, n: int) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, list | tuple) else (value or 1,) * n
    return tuple(int(v) for v in values[-n:])


def estimate_bytes(pipe: Any, height: int, width: int, frames: int = 1, batch: int = 1) -> int:
    """About how many bytes generating ``batch`` images (or videos of ``frames``) of ``height x width`` needs at its
    peak: the larger of the denoiser's activations at its first level (4 live tensors of every token x channel, for
    both classifier-free-guidance branches) and the VAE decoder's last block at full resolution (2 live tensors),
    plus the decoded images in float32. Weights, text and attention scores are not counted (fused attention keeps no
    score matrix): an estimate of what grows with the size, to refuse what cannot fit before it is tried."""
    from ..models.denoisers import first_denoiser

    den = first_denoiser(pipe)
    cfg = den.config
    item = next((p.element_size() for p in den.parameters()), 4)
    vae = getattr(pipe, "vae", None)
    scale = getattr(pipe, "vae_scale_factor", None) or getattr(pipe, "vae_scale_factor_spatial", None) or 1
    t_scale = getattr(pipe, "vae_scale_factor_temporal", None) or 1
    lat_f = math.ceil(frames / t_scale) if frames > 1 else 1
    lat_h, lat_w = math.ceil(height / scale), math.ceil(width / scale)
    if "block_out_channels" in cfg:  # UNet: the first level runs at the latent resolution
        channels, tokens = cfg["block_out_channels"][0], lat_f * lat_h * lat_w
    else:
        ph, pw = _axes(cfg.get("patch_size"), 2)
        heads, dim = cfg.get("num_attention_heads") or 1, cfg.get("attention_head_dim") or 0
        channels = heads * dim or cfg.get("hidden_size") or cfg.get("inner_dim") or 1
        tokens = lat_f * math.ceil(lat_h / ph) * math.ceil(lat_w / pw)
    denoiser = 2 * batch * tokens * channels * item * 4
    decoder = 0
    if vae is not None:
        vae_cfg = vae.config
        vae_channels = (vae_cfg.get("decoder_block_out_channels") or vae_cfg.get("block_out_channels") or [3])[0]
        decoder = batch * frames * vae_channels * height * width * item * 2
    return max(denoiser, decoder) + batch * frames * 3 * height * width * 4


def check_memory(pipe: Any, kw: dict[str, Any], device: torch.device | str = "cpu", batch: int = 1) -> None:
    """Refuse (one line, with the estimate) a request of call arguments ``kw`` that cannot fit, before generating."""
    height, width = kw.get("height"), kw.get("width")
    if height is None or width is None:
        return  # the pipeline's own default size: the model was made for it
    frames = kw.get("num_frames") or 1
    need = estimate_bytes(pipe, int(height), int(width), int(frames), batch)
    size = f"{height}x{width}" + (f"x{frames} frames" if frames > 1 else "")
    size += f" (batch {batch})" if batch > 1 else ""
    _refuse_if_too_big(need, f"generating {size}", torch.device(device))


# --- what to run -------------------------------------------------------------------------------------------------


def tiny_inputs(args: Any, default_size: int | None = None) -> tuple[Any, list[str], int, int]:
    """The embedded model, the captions, the (square) size (``default_size`` when none is given, else 2x the training
    size) and the step count from the command's arguments; a ValueError names a non-square or bad size, or an
    unknown caption word."""
    from ..pipelines.tiny_shapes import data as tiny_data
    from ..pipelines.tiny_shapes import pipeline as tm
    from ..pipelines.tiny_shapes.job import STEPS, class_captions

    sizes = {v for v in (args.height, args.width) if v is not None}
    size = sizes.pop() if len(sizes) == 1 else (default_size or 2 * tm.RESOLUTION)
    if sizes:
        raise ValueError(f"the tiny model draws square images; got height={args.height}, width={args.width}")
    if size % tm.PATCH:
        raise ValueError(f"--height/--width {size}: the tiny model needs a multiple of its patch size {tm.PATCH} "
                         f"(e.g. 32, 64)")  # fmt: skip
    captions = class_captions(args.seed) if args.prompt is None else [args.prompt]
    for c in captions:
        tiny_data.parse_caption(c)
    return tm.tiny_model(), captions, size, STEPS if args.steps is None else args.steps


def load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Pipeline and call kwargs: the embedded model, tiny offline models, or a folder / hub id. Every check of
    `before_load` runs first; `check_memory` after the load, before anything is generated."""
    before_load(args)
    if args.model == EMBEDDED:
        pipe, captions, size, steps = tiny_inputs(args)
        kw = {"prompt": captions[0], "height": size, "width": size, "num_inference_steps": steps}
        check_memory(pipe, kw, getattr(args, "device", None) or "cpu")
        return pipe, kw
    pipe = load_pipeline(args.model, dtype=torch_dtype(args))
    if args.model in TINY_MODELS:
        size = 256 if args.model == "tiny-sd" else None
        height = size if args.height is None else args.height
        width = size if args.width is None else args.width
        kw = tiny_call_kwargs(args.model, seed=args.seed, height=height, width=width)
        if args.steps is not None:
            kw["num_inference_steps"] = args.steps
        if getattr(args, "frames", None) is not None and "num_frames" in kw:
            kw["num_frames"] = args.frames
        kw["output_type"] = "pil"
    else:
        kw = {"prompt": HUB_PROMPT if args.prompt is None else args.prompt}
        kw["num_inference_steps"] = 30 if args.steps is None else args.steps
        for key, value in (("height", args.height), ("width", args.width), ("num_frames", args.frames)):
            if value is not None:
                kw[key] = value
    check_memory(pipe, kw, getattr(args, "device", None) or "cpu")
    return pipe, kw


def where(args: argparse.Namespace) -> dict[str, Any]:
    """``apply_attention``'s module, backend and temporal choices from the command line."""
    return {"layers": args.layers, "backend": args.backend, "temporal_window": args.temporal_window}


# --- prompt and config files ---------------------------------------------------------------------------------------


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; a one-line error naming the file if it is missing, a folder or not UTF-8."""
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{what} {str(path)!r} is a folder: give a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{what} {str(path)!r} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})"
        ) from None


def read_prompts(path: Path) -> list[str]:
    """Non-empty lines of a prompt file; a one-line error naming the file if it has none or cannot be read."""
    prompts = [line.strip() for line in read_text_file(path, "prompt file").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {str(path)!r} has no prompts (one prompt per non-empty line)")
    return prompts


def read_configs(texts: Sequence[str], path: Path | None) -> list[RunConfig]:
    """Configs from ``--config`` strings and a ``--configs`` JSON list of ``{"method": ..., "knobs": {...},
    "layers": ...}``; a one-line error naming the file and entry for a bad one, and for two configs with one label
    (each is a row of the report)."""
    configs = [RunConfig.parse(t) for t in texts]
    if path is not None:
        text = read_text_file(path, "--configs file")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            where_ = f"line {e.lineno} column {e.colno}"
            raise ValueError(f"--configs {str(path)!r} is not JSON ({e.msg} at {where_})") from None
        if not isinstance(data, list):
            raise ValueError(f"--configs {str(path)!r}: expected a JSON list of configs, got {type(data).__name__}")
        for i, entry in enumerate(data):
            where_ = f"--configs {str(path)!r} entry {i}"
            if not isinstance(entry, dict) or not isinstance(entry.get("method"), str):
                raise ValueError(f'{where_}: expected {{"method": NAME, "knobs": {{...}}}}, got {entry!r}')
            if not isinstance(entry.get("knobs") or {}, dict):
                raise ValueError(f'{where_}: "knobs" must be an object of NAME: VALUE, got {entry["knobs"]!r}')
            if not isinstance(entry.get("layers"), str | None):
                raise ValueError(f'{where_}: "layers" must be a regex string or null, got {entry["layers"]!r}')
            unknown = sorted(set(entry) - {"method", "knobs", "layers"})
            if unknown:
                raise ValueError(f"{where_}: unknown key(s) {unknown}; accepted: method, knobs, layers")
            configs.append(RunConfig.from_dict(entry))
    if not configs:
        raise ValueError("no method config given: pass --config 'METHOD [NAME=VALUE ...]' (repeatable)")
    seen: dict[str, int] = {}
    for i, config in enumerate(configs, 1):
        if config.label in seen:
            raise ValueError(
                f"config {config.label!r} is given twice (configs {seen[config.label]} and {i}): each config is a "
                "row of the report, so each must differ"
            )
        seen[config.label] = i
    return configs


__all__ = ["before_load", "check_memory", "check_out", "load", "method_knobs", "read_configs", "read_prompts", "where"]
