"""Model name -> pipeline, the one loader of the command line and the demo: ``"tiny"`` (the embedded trained
model), a ``tiny-…`` random-weight pipeline, or a diffusers folder / hub id (safetensors weights only)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny import TINY_MODELS

#: the embedded trained model's name (``diffattn.tiny_model()``)
EMBEDDED = "tiny"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(
    model: str, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
    local_files_only: bool = False,
) -> Any:
    """The pipeline named ``model``. A folder or hub id is loaded with ``use_safetensors=True`` (never pickle
    weights), in ``dtype`` (default: bfloat16 on CUDA, else float32), onto ``device`` (default: CUDA if there is
    one); ``local_files_only`` never touches the network. A ValueError says what can be given instead."""
    if model == EMBEDDED:
        from .tiny_shapes import tiny_model

        return tiny_model()
    if model in TINY_MODELS:
        from ..tiny import build_tiny_pipeline

        return build_tiny_pipeline(model)
    from diffusers import DiffusionPipeline

    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    try:
        pipe = DiffusionPipeline.from_pretrained(
            model, torch_dtype=dtype, use_safetensors=True, local_files_only=local_files_only
        )
    except Exception as e:  # noqa: BLE001 - re-raised with what the user can do about it
        where = "offline " if local_files_only else ""
        raise ValueError(
            f"cannot load model {model!r} {where}({type(e).__name__}: {e}); give a local pipeline folder with "
            f"safetensors weights, a hub id whose weights are cached, {EMBEDDED!r} (the embedded model) or one of "
            f"the offline models: {', '.join(TINY_MODELS)}"
        ) from e
    return pipe.to(device or default_device())
