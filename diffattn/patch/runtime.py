"""Per denoiser and handle: what the forward pre-hook records for the current call (token layout,
timestep, step index, CFG branch), the method's per-thread state for one generation, and the
forward wrapper through which a method runs the denoiser twice or not at all."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..kernels import Backend
from ..layout import LayoutError, TokenLayout
from ..methods import AttentionMethod, Branch, DenoiserCall
from ..methods.lifecycle import UNKNOWN_BRANCH
from ..models import FamilyAdapter
from .context_parallel import splits_input
from .generation import Generations
from .select import StepFraction

logger = logging.getLogger("diffattn")


class NearestTimestep:
    """``lookup(timesteps, t)``: index of the entry of a scheduler's ``timesteps`` nearest to ``t``, read once
    per denoiser call. Keeps a float CPU copy per ``timesteps`` object, so a GPU schedule is not copied (a
    device sync) on every call."""

    def __init__(self) -> None:
        self._cached: tuple[Any, torch.Tensor] | None = None  # (scheduler.timesteps, its float CPU copy)

    def __call__(self, timesteps: Any, t: float) -> int:
        cached = self._cached
        if cached is None or cached[0] is not timesteps:
            cached = self._cached = (timesteps, torch.as_tensor(timesteps).float().cpu())
        return int(torch.argmin((cached[1] - t).abs()))


@dataclass
class CallStats:
    """Per-module counts of intercepted attention calls."""

    sparse: int = 0
    fallback: int = 0
    dense: int = 0  # passthrough method or outside ``steps``
    cross: int = 0  # cross-attention calls that ran the module
    cross_cached: int = 0  # cross-attention calls the method answered without running the module
    cached: int = 0  # self-attention calls the method answered without running the module
    kind: str = "self"  # "self" (the grid, maybe joint with dense tokens), "temporal" (frames) or "cross"
    grid: tuple[int, ...] | None = None  # the grid of the last sparse call
    extra: int = 0  # dense (text, reference, register) keys of the last sparse call
    text: int = 0  # of those, the keys outside the latent stream (text); the rest are references / registers
    #: kernel path of the sparse calls (``"tiled(4x4)"``, ``"masked-sdpa"``, ``"triton"``, ...; several joined
    #: by ``+`` when one call ran several kernels) -> number of calls that took it
    paths: dict[str, int] = field(default_factory=dict)


def attention_calls(stats: CallStats) -> int:
    """Every call a patched module made, however it ran (sparse, fallback, dense, cross, from a cache)."""
    return stats.sparse + stats.fallback + stats.dense + stats.cross + stats.cross_cached + stats.cached


_NAMED = 6  # modules named in the no-attention-call warning; the rest are counted


@dataclass
class _Runtime:
    """Per denoiser: what the pre-hook recorded for the current call, shared by its processors.

    Everything per call or per generation is thread-local, so two threads generating on one patched
    pipeline neither see each other's layout or step nor share method state.
    """

    adapter: FamilyAdapter
    method: AttentionMethod
    backend: Backend
    steps: range | StepFraction | None
    scheduler: Any
    generations: Generations = field(default_factory=Generations)
    #: the method overrides `AttentionMethod.process`
    processes: bool = False
    #: False once the handle is removed: a forward wrapper someone else wrapped over then passes through
    installed: bool = False
    stats: dict[str, CallStats] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)
    local: threading.local = field(default_factory=threading.local)
    #: the first denoiser call was checked for patched modules that made no attention call (`post_hook`)
    checked: bool = False
    _check_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _nearest: NearestTimestep = field(default_factory=NearestTimestep, repr=False)

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        call = self.adapter.bind(module, args, kwargs)
        local = self.local
        # layout (issue 10): a call without a readable grid runs dense, counted, with the reason
        try:
            local.layout, local.why = self.adapter.read_layout(module, call), ""
        except (LayoutError, KeyError, TypeError, IndexError) as e:
            local.layout, local.why = None, f"no token grid for this call: {e}"
        local.observed = None  # (position, count) of the dense tokens a joint module of this call showed
        t = self.adapter.read_timestep(call)
        local.timestep = None if t is None else float(t.flatten()[0]) * self.adapter.timestep_scale
        local.step = self._step_index(local.timestep)
        local.active = self.steps is None or self._in_steps(local.step)
        self._track_generation(local)
        local.branch = self.generations.branch_of(call.get("encoder_hidden_states"))
        # under context parallelism: whether diffusers splits the text per rank (joint calls then
        # see [txt_0, img_0, txt_1, img_1, ...]); read only when parallelism is on
        local.text_split = getattr(module, "_parallel_config", None) is not None and splits_input(
            module, "encoder_hidden_states"
        )

    def post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        """After the denoiser's first call: warn once about patched modules that made no attention call in it.
        Another tool replaced their processor after apply, or their processor never calls
        ``F.scaled_dot_product_attention``; either way the method never runs there, and all their counts stay 0."""
        with self._check_lock:
            if self.checked or not self.installed:
                return
            self.checked = True
        silent = [name for name, s in self.stats.items() if not attention_calls(s)]
        if silent:
            shown = ", ".join(silent[:_NAMED]) + (f" and {len(silent) - _NAMED} more" if len(silent) > _NAMED else "")
            logger.warning(
                "diffattn: %d of %d patched module(s) made no attention call in the first call of %s: %s. Their "
                "processor was replaced after apply_attention, or never calls F.scaled_dot_product_attention: "
                "%s does not run there (re-apply after changing processors)",
                len(silent), len(self.stats), type(module).__name__, shown, self.method.name,
            )

    def _step_index(self, timestep: float | None) -> int | None:
        """Index of the nearest entry of ``scheduler.timesteps`` (so repeated calls per step agree), or
        None without a timestep or a scheduler with set timesteps. Never a call count."""
        timesteps = getattr(self.scheduler, "timesteps", None)
        if timestep is None or timesteps is None or len(timesteps) == 0:
            return None
        return self._nearest(timesteps, timestep)

    def _in_steps(self, step: int | None) -> bool:
        if step is None:
            raise RuntimeError("steps= needs the denoiser's timestep and a scheduler with set timesteps")
        n = len(self.scheduler.timesteps)
        if isinstance(self.steps, StepFraction):
            steps = self.steps.resolve(n)
        else:
            assert self.steps is not None
            steps = self.steps
            if steps.start >= n:
                raise ValueError(
                    f"steps={steps.start}..{steps.stop} lies outside the schedule of {n} steps; "
                    f"steps must start below {n}"
                )
        return step in steps

    def _track_generation(self, local: threading.local) -> None:
        """Drop this thread's method state when a new generation starts: the pipeline's ``check_inputs`` or a
        new ``encode_prompt`` ran since (`Generations`), or the step index went back (pipelines without them)."""
        generation = self.generations.current()
        step, last = local.step, getattr(local, "last_step", None)
        if getattr(local, "generation", None) != generation or (step is not None and last is not None and step < last):
            self.reset(generation)
        if step is not None:
            local.last_step = step
        self.generations.denoising()

    def reset(self, generation: int | None = None) -> None:
        """Drop the calling thread's method state."""
        local = self.local
        local.generation = self.generations.current() if generation is None else generation
        local.states = {}
        local.last_step = None

    def layer_state(self, name: str) -> dict[str, Any]:
        """The calling thread's state dict of layer ``name`` (``""``: the denoiser's own) this generation."""
        states = getattr(self.local, "states", None)
        if states is None:
            states = self.local.states = {}
        return states.setdefault(name, {})

    def make_forward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """The denoiser ``forward`` override that hands each call to the method's `new_forward`."""

        def runner(branch: Branch | None, args: tuple, kwargs: dict[str, Any]) -> Any:
            if branch is None:
                return original(*args, **kwargs)
            local = self.local
            previous = local.branch
            local.branch = branch
            try:
                return original(*args, **kwargs)
            finally:
                local.branch = previous

        @functools.wraps(original)
        def forward(*args: Any, **kwargs: Any) -> Any:
            if not self.installed or not self.active:
                return original(*args, **kwargs)
            call = DenoiserCall(self.step, self.timestep, self.branch, self.layer_state(""), runner)
            return self.method.new_forward(call, *args, **kwargs)

        return forward

    @property
    def layout(self) -> TokenLayout | None:
        return getattr(self.local, "layout", None)

    @property
    def why(self) -> str:
        """Why this call has no layout (the fallback reason)."""
        return getattr(self.local, "why", "") or "no token layout recorded for this call"

    @property
    def active(self) -> bool:
        return getattr(self.local, "active", True)

    @property
    def timestep(self) -> float | None:
        return getattr(self.local, "timestep", None)

    @property
    def step(self) -> int | None:
        return getattr(self.local, "step", None)

    @property
    def branch(self) -> Branch:
        return getattr(self.local, "branch", UNKNOWN_BRANCH)

    @property
    def text_split(self) -> bool:
        return getattr(self.local, "text_split", False)
