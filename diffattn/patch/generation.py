"""Where a denoiser call sits in the pipeline call: which generation (for resetting method state) and
which classifier-free-guidance branch (cond / uncond / batched rows).

A new generation starts for the calling thread (its method state is dropped, and the embeddings below are
forgotten) when
  - the pipeline's ``check_inputs`` runs, the first thing every diffusers pipeline's ``__call__`` does;
  - ``encode_prompt`` runs after the denoiser has run in this generation: every text pipeline encodes its
    prompts before its denoising loop, so this holds for pipelines without ``check_inputs`` too (the
    embedded model's);
  - the step index goes back (`runtime`; pipelines without either method).
Two instance-level wrappers on the pipeline do the first two, installed as undo records like everything else;
``encode_prompt``'s also reads the embeddings: its first output tensor is the positive prompt embedding; the
negative one is the next output of the same shape kind (SD/SDXL/SD3/PixArt/Wan/CogVideoX/LTX return both), or
the first output of a second ``encode_prompt`` call in the same generation (FLUX, HunyuanVideo and the
embedded model encode the negative prompt with a second call).
The pre-hook compares the ``encoder_hidden_states`` the denoiser receives with them: equal to the
positive one is ``cond``, to the negative one ``uncond``, to ``cat([negative, positive])`` batched ``cfg``
(diffusers' row order); anything else ``unknown``. Identical positive and negative embeddings cannot
be told apart in separate calls: both are labelled ``cond``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..methods.lifecycle import UNKNOWN_BRANCH, Branch
from .records import SetAttr


class Generations:
    """Per handle and per thread: the generation counter and the captured prompt embeddings."""

    def __init__(self) -> None:
        self.local = threading.local()

    def current(self) -> int:
        """The calling thread's generation number (0 before its first pipeline call)."""
        return getattr(self.local, "generation", 0)

    def start(self) -> None:
        """A new generation starts in the calling thread."""
        self.local.generation = self.current() + 1
        self.local.pos = self.local.neg = None
        self.local.denoised = False

    def denoising(self) -> None:
        """The denoiser is called in the calling thread (its pre-hook)."""
        self.local.denoised = True

    def encoding(self) -> None:
        """``encode_prompt`` is about to run in the calling thread: a new generation if the denoiser ran since
        this generation started (prompts are encoded before the denoising loop)."""
        if getattr(self.local, "denoised", False):
            self.start()

    def capture(self, output: Any) -> None:
        """Record ``encode_prompt``'s output (see the module docstring)."""
        tensors = output if isinstance(output, tuple) else (output,)
        first = tensors[0] if tensors else None
        if not isinstance(first, Tensor):
            return
        if getattr(self.local, "pos", None) is None:
            self.local.pos = first
            same_kind = [t for t in tensors[1:] if isinstance(t, Tensor) and t.shape[1:] == first.shape[1:]]
            self.local.neg = same_kind[0] if same_kind else None
        elif getattr(self.local, "neg", None) is None:
            self.local.neg = first

    def branch_of(self, text: Any) -> Branch:
        """The branch of a denoiser call receiving ``encoder_hidden_states=text`` in the calling thread."""
        pos = getattr(self.local, "pos", None)
        if not isinstance(text, Tensor) or pos is None:
            return UNKNOWN_BRANCH
        neg = self.local.neg
        rows = text.shape[0]
        if _same(text, pos):
            return Branch("cond", tuple(range(rows)))
        if neg is None:
            return UNKNOWN_BRANCH
        if _same(text, neg):
            return Branch("uncond", ())
        n = neg.shape[0]
        if rows == n + pos.shape[0] and _same(text[:n], neg) and _same(text[n:], pos):
            return Branch("cfg", tuple(range(n, rows)))
        return UNKNOWN_BRANCH

    def records(self, pipe: Any) -> list[SetAttr]:
        """The pipeline wrappers (for those of ``check_inputs`` / ``encode_prompt`` the pipeline has)."""
        out = []
        check = getattr(pipe, "check_inputs", None)
        if callable(check):
            out.append(SetAttr(pipe, "check_inputs", _before(check, self.start)))
        encode = getattr(pipe, "encode_prompt", None)
        if callable(encode):
            out.append(SetAttr(pipe, "encode_prompt", _around(encode, self.encoding, self.capture)))
        return out


def _same(a: Tensor, b: Tensor) -> bool:
    return a is b or (a.shape == b.shape and torch.equal(a, b.to(a.device, a.dtype)))


def _before(original: Callable[..., Any], first: Callable[[], None]) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first()
        return original(*args, **kwargs)

    return wrapper


def _around(original: Callable[..., Any], first: Callable[[], None], then: Callable[[Any], None]) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first()
        out = original(*args, **kwargs)
        then(out)
        return out

    return wrapper
