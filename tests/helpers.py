"""Small helpers shared by the tests (the pipeline fixtures and the session cache live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import torch

from diffattn.methods import AttentionMethod, get_method
from diffattn.models.denoisers import first_denoiser
from diffattn.patch import _ACTIVE


def denoiser(pipe) -> torch.nn.Module:
    """The pipeline's UNet or transformer (the first one it runs)."""
    return first_denoiser(pipe)


def processors(pipe) -> dict[str, object]:
    """Attention processor of every attention module of the pipeline's denoiser, by module name."""
    return {n: m.processor for n, m in denoiser(pipe).named_modules() if hasattr(m, "set_processor")}


def same_objects(a: dict, b: dict) -> bool:
    """Same keys, and the very same objects under each (identity, not equality)."""
    return a.keys() == b.keys() and all(a[k] is b[k] for k in a)


def attention_state(pipe) -> dict:
    """Everything patching may touch on the pipeline's denoiser, by identity where identity matters."""
    den = denoiser(pipe)
    modules = [(n, m) for n, m in den.named_modules() if hasattr(m, "set_processor")]
    return {
        "processors": [(n, id(m.processor)) for n, m in modules],
        "backends": [(n, getattr(m.processor, "_attention_backend", "absent")) for n, m in modules],
        "pre_hooks": list(den._forward_pre_hooks),
        "kwarg_hooks": list(den._forward_pre_hooks_with_kwargs),
        "attrs": sorted(den.__dict__),
        "active": den in _ACTIVE,
    }


def fail_set_processor(monkeypatch, victim, when=lambda processor: True) -> None:
    """Make ``victim.set_processor`` raise "injected failure" when it is handed a diffattn wrapper for
    which ``when(wrapper)`` holds (undo with ``monkeypatch.undo()``); every other call goes through."""
    original_set = type(victim).set_processor

    def failing(self, processor):
        if self is victim and getattr(processor, "diffattn_patch", None) is not None and when(processor):
            raise RuntimeError("injected failure")
        return original_set(self, processor)

    monkeypatch.setattr(type(victim), "set_processor", failing)


def make_method(name: str, **knobs) -> AttentionMethod:
    """A registered method instance with a config built from ``knobs``."""
    cls = get_method(name)
    return cls(cls.make_config(**knobs))


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal fp32 tensor."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def random_qkv(n: int, dtype=torch.float32, seed: int = 0, batch: int = 2, heads: int = 2, dim: int = 8):
    """Three seeded ``[batch, n, heads, dim]`` tensors."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n, heads, dim, generator=g).to(dtype) for _ in range(3)]


def random_text(t: int, dtype=torch.float32, seed: int = 1, batch: int = 2, padded: bool = True, dim: int = 8):
    """Text keys, values ``[batch, t, 2, dim]`` and their key-padding mask ``[batch, t]`` (True = valid);
    ``padded``: batch row 0 has its last ``t - t // 2`` keys padded."""
    k, v, _ = random_qkv(t, dtype, seed, batch, dim=dim)
    mask = torch.ones(batch, t, dtype=torch.bool)
    if padded:
        mask[0, t // 2 :] = False
    return k, v, mask


def run_script(name: str, *args: str) -> tuple[int, str, str]:
    """``python scripts/<name> args...`` in this process (its argument parsing and its one call into the package),
    returning (exit code, stdout, stderr); cheaper than a subprocess, which would import torch again."""
    import contextlib
    import io
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / name
    out, err = io.StringIO(), io.StringIO()
    argv, code = sys.argv, 0
    sys.argv = [str(script), *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        if isinstance(e.code, str):
            err.write(e.code + "\n")
            code = 1
        else:
            code = e.code or 0
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def served(blocks: Any) -> Iterator[str]:
    """``blocks`` (the demo's Gradio app) served on a free loopback port with the settings `diffattn demo` uses;
    yields its URL and closes it afterwards."""
    from diffattn import demo

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False,
                  **demo.server_settings())  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        blocks.close()
