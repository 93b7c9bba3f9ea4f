"""What a method sees of the denoising loop besides q/k/v: the step and branch of the current denoiser
call, per-layer state for one generation, and the two wrapping points (the denoiser's forward, a
targeted module's processor). `diffattn.patch` fills these in; methods only read and call them.

The shape follows diffusers' hooks (``ModelHook.new_forward``, ``StateManager`` / ``reset_state``): a
method's state lives for one pipeline call, per patch handle and per thread, and is dropped when the
next generation starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

AttentionKind = Literal["self", "cross"]
TARGET_KINDS: frozenset[str] = frozenset({"self", "cross"})


@dataclasses.dataclass(frozen=True)
class Branch:
    """Which classifier-free-guidance pass a denoiser call is.

    name: ``"cond"`` (every batch row carries the positive prompt), ``"uncond"`` (none does),
        ``"cfg"`` (batched CFG: ``cond_rows`` do, the others carry the negative prompt; diffusers
        orders them ``[uncond, cond]``), ``"full"`` (or any label a method's `DenoiserCall.run_as`
        gives its extra forward), ``"unknown"`` (no prompt embeddings to compare with: a bare
        denoiser, a class-conditional pipeline, embeddings the pipeline changed before the call).
    cond_rows: batch rows that carry the positive prompt, or None when unknown.
    """

    name: str = "unknown"
    cond_rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"branch name {self.name!r} must be a non-empty string")


UNKNOWN_BRANCH = Branch()


@dataclasses.dataclass(frozen=True)
class DenoiserCall:
    """One denoiser call as `AttentionMethod.new_forward` sees it.

    step: index into ``scheduler.timesteps`` of this call (None without a pipeline scheduler).
    timestep: the call's timestep in scheduler units, or None.
    branch: the CFG pass of this call (see `Branch`).
    state: the method's denoiser-level state: a dict that lives for one generation, per handle and thread.
    """

    step: int | None
    timestep: float | None
    branch: Branch
    state: dict[str, Any]
    _runner: Callable[[Branch | None, tuple, dict], Any] = dataclasses.field(repr=False)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run the denoiser's own forward once, as this call's branch."""
        return self._runner(None, args, kwargs)

    def run_as(self, branch: str | Branch, *args: Any, **kwargs: Any) -> Any:
        """Run the denoiser's own forward once more, its attention calls labelled ``branch`` (e.g.
        ``"full"``); a name keeps this call's ``cond_rows``, a `Branch` sets them (sliced batches)."""
        if not isinstance(branch, Branch):
            branch = Branch(branch, self.branch.cond_rows)
        return self._runner(branch, args, kwargs)


@dataclasses.dataclass(frozen=True)
class InnerAttention:
    """One attention call made inside a targeted module's processor, as a function given to
    `ModuleCall.route_attention` sees it (e.g. the text term and the image-context term of Wan's
    image-to-video cross-attention, two calls of one processor).

    index: 0, 1, ... in the order the processor makes its calls during one run.
    q, k, v: ``[B, S, H, D]`` (views of the processor's own tensors: normed, rotated, projected).
    """

    index: int
    q: Any
    k: Any
    v: Any
    _compute: Callable[[Sequence[int] | None], Any] = dataclasses.field(repr=False)

    def compute(self, rows: Sequence[int] | None = None) -> Any:
        """The processor's own attention of batch ``rows`` (None = all), ``[len(rows), S, H, D]``, with its
        mask (sliced to the rows where it has a batch axis) and scale."""
        return self._compute(rows)


@dataclasses.dataclass(frozen=True)
class ModuleCall:
    """One call of a targeted attention module's processor, as `AttentionMethod.process` sees it.

    layer, layer_index: qualified module name and its position among the patched modules of its kind.
    kind: ``"self"`` or ``"cross"``.
    step, timestep, branch: as in `DenoiserCall`.
    state: this layer's state for one generation (a dict, per handle and thread).
    arguments: the processor's arguments by name (``attn``, ``hidden_states [B, S, C]``,
        ``encoder_hidden_states [B, T, C]``, ``attention_mask``, ...), read-only.

    A method that runs the module for some batch rows and answers the others from its state calls
    `mark_served_from_cache`, so the call counts as cached too (``CallStats.cross_cached`` / ``cached``).
    A method that needs the attention calls *inside* a cross-attention processor (one term of several)
    calls `route_attention` before ``run``.
    """

    layer: str
    layer_index: int
    kind: AttentionKind
    step: int | None
    timestep: float | None
    branch: Branch
    state: dict[str, Any]
    arguments: Mapping[str, Any]
    _served: list[bool] = dataclasses.field(default_factory=list, repr=False)
    _route: list[Callable[[InnerAttention], Any]] = dataclasses.field(default_factory=list, repr=False)

    def route_attention(self, fn: Callable[[InnerAttention], Any]) -> None:
        """Hand every attention call of the following ``run()`` calls of a cross-attention processor to
        ``fn``, which returns its output ``[B, S, H, D]`` (``InnerAttention.compute()`` is the processor's
        own). The processor's projections, norms and output projection run as usual around it."""
        if self.kind != "cross":
            raise ValueError(f"route_attention is for cross-attention modules; {self.layer} is {self.kind}-attention")
        self._route[:] = [fn]

    @property
    def attention_route(self) -> Callable[[InnerAttention], Any] | None:
        """The function given to `route_attention`, or None."""
        return self._route[0] if self._route else None

    def mark_served_from_cache(self) -> None:
        """Count this call as (partly) answered from the method's state."""
        self._served.append(True)

    @property
    def served_from_cache(self) -> bool:
        return bool(self._served)


__all__ = ["TARGET_KINDS", "UNKNOWN_BRANCH", "AttentionKind", "Branch", "DenoiserCall", "InnerAttention", "ModuleCall"]
