"""Small helpers shared by the tests (the `tiny` fixture itself lives in conftest.py)."""

from __future__ import annotations

import torch

from diffattn.methods import AttentionMethod, get_method


def denoiser(pipe) -> torch.nn.Module:
    """The pipeline's UNet or transformer."""
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def processors(pipe) -> dict[str, object]:
    """Attention processor of every attention module of the pipeline's denoiser, by module name."""
    return {n: m.processor for n, m in denoiser(pipe).named_modules() if hasattr(m, "set_processor")}


def same_objects(a: dict, b: dict) -> bool:
    """Same keys, and the very same objects under each (identity, not equality)."""
    return a.keys() == b.keys() and all(a[k] is b[k] for k in a)


def make_method(name: str, **knobs) -> AttentionMethod:
    """A registered method instance with a config built from ``knobs``."""
    cls = get_method(name)
    return cls(cls.make_config(**knobs))


def random_qkv(n: int, dtype=torch.float32, seed: int = 0, batch: int = 2, heads: int = 2, dim: int = 8):
    """Three seeded ``[batch, n, heads, dim]`` tensors."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n, heads, dim, generator=g).to(dtype) for _ in range(3)]
