"""What a method is: a frozen, self-validating config plus how each image query attends.

A method sees image tokens ``[B, S, H, D]`` laid out on a grid (frames, rows, columns) and the
optional extra keys every query must also attend (text tokens of joint attention). It describes
*what* is attended (usually by building a `BlockPlan`) and leaves *how* to `diffattn.kernels`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from ..kernels import Backend, BlockPlan, block_sparse_attention, get_backend
from ..layout import TokenLayout
from .lifecycle import UNKNOWN_BRANCH, Branch, DenoiserCall, ModuleCall

if TYPE_CHECKING:
    from ..models import FamilyAdapter

AXIS_NAMES = {1: "tokens", 2: "rows, columns", 3: "frames, rows, columns"}


def axis_ints(name: str, value: object) -> tuple[int, ...]:
    """A knob given as an int or 1 to 3 ints (one per axis), each >= 1, as a tuple; errors name the knob."""
    values = value if isinstance(value, tuple | list) else (value,)
    if not 1 <= len(values) <= 3:
        raise ValueError(f"{name}={value!r} must be an int or a tuple of 1 to 3 ints")
    for x in values:
        if isinstance(x, bool) or not isinstance(x, int):
            raise TypeError(f"{name}={value!r} must hold ints, got {type(x).__name__}")
        if x < 1:
            raise ValueError(f"{name}={value!r} must be >= 1 on every axis")
    return tuple(values)


def per_axis(name: str, values: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """``values`` for each of the grid's ``ndim`` axes: one value repeats; otherwise the axes must match."""
    if len(values) == 1:
        return values * ndim
    if len(values) != ndim:
        raise ValueError(
            f"{name}={values} has {len(values)} axes but the token grid has {ndim} "
            f"({AXIS_NAMES[ndim]}); "
            f"give an int or a {ndim}-tuple"
        )
    return values


class UnknownKnobError(TypeError, ValueError):
    """A knob name the method's config does not have: a TypeError, as for an unknown keyword argument, and a
    ValueError, as for any bad value typed into the command line or the demo page."""


def call_generator(seed: int, layer: str, timestep: float | None) -> torch.Generator:
    """A fresh CPU generator seeded by ``(seed, layer, timestep)``: draws that depend only on the
    call, not on call order or thread, so reruns with the same seed reproduce."""
    key = f"{seed}|{layer}|{'none' if timestep is None else repr(float(timestep))}"
    # a stable hash (Python's str hash is salted per process)
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


@dataclasses.dataclass(frozen=True)
class AttendCall:
    """Everything a method needs besides q/k/v for one attention call.

    grid: token grid of the image part, e.g. ``(H, W)`` or ``(F, H, W)``.
    extra_k, extra_v: ``[B, T, H, D]`` keys every query attends (text), or None.
    extra_mask: bool ``[B, T]`` key padding of the extra keys (True = valid), or None.
    scale: softmax scale (None = ``D ** -0.5``).
    backend: the kernel `Backend`, resolved once by `choose_backend` (a name is looked up, unchecked).
    layer: qualified name of the patched attention module (e.g. ``unet.down_blocks.0...attn1``).
    layer_index: position of that module among the patched modules of its denoiser (0, 1, ...).
    timestep: the denoiser's timestep of this call in scheduler units, or None if unknown. Methods
        that vary per call (e.g. a random shift) derive it from (config seed, layer, timestep), so a
        rerun with the same seed reproduces whatever order or thread the calls arrive in.
    step: index of this call's timestep in ``scheduler.timesteps``, or None without a pipeline scheduler.
    branch: the classifier-free-guidance pass of this call (`Branch`: cond, uncond, cfg rows, full, unknown).
    state: this layer's state dict for the current generation (per handle and thread), or None
        outside a patched pipeline.
    layout: the token layout of the whole denoiser call (UNets: ``layout.grid`` is the finest level,
        so ``grid`` tells the level), or None outside a patched pipeline.
    """

    grid: tuple[int, ...]
    extra_k: Tensor | None = None
    extra_v: Tensor | None = None
    extra_mask: Tensor | None = None
    scale: float | None = None
    backend: Backend = get_backend("cpu")
    layer: str = ""
    layer_index: int = 0
    timestep: float | None = None
    step: int | None = None
    branch: Branch = UNKNOWN_BRANCH
    state: dict[str, Any] | None = None
    layout: TokenLayout | None = None

    def __post_init__(self) -> None:
        if isinstance(self.backend, str):
            object.__setattr__(self, "backend", get_backend(self.backend))


@dataclasses.dataclass(frozen=True)
class FlopBound:
    """Speedup bound of a method over dense attention from score FLOPs: dense (query, key) pairs over
    the pairs the method computes. ``formula`` says how it was counted, e.g. ``"N / window 64"``."""

    value: float
    formula: str


def pairs_bound(grid: tuple[int, ...], extra_tokens: int, method_pairs: float, formula: str) -> FlopBound:
    """`FlopBound` of a method computing ``method_pairs`` (query, key) pairs on ``grid`` where dense
    attention computes ``N x (N + extra_tokens)`` (image queries over image + text keys)."""
    if isinstance(extra_tokens, bool) or not isinstance(extra_tokens, int) or extra_tokens < 0:
        raise ValueError(f"extra_tokens={extra_tokens!r} must be an int >= 0")
    n = math.prod(grid)
    if extra_tokens:
        formula += f", each query also attends {extra_tokens} text keys"
    return FlopBound(n * (n + extra_tokens) / method_pairs, formula)


#: ``(knobs, exception type, message regex)``: knobs a config must reject, and the error it raises
BadKnobs = tuple[dict[str, Any], type[Exception], str]


class AttentionMethod:
    """Base class of registered methods. Subclasses set ``name`` and ``Config``.

    Lifecycle (all optional; diffusers' ``ModelHook`` is the model): ``targets`` says which attention
    modules are wrapped; `supports` refuses a model family at apply time; `new_forward` wraps each
    denoiser call (run it twice, or not at all); `process` wraps each call of a targeted module's
    processor (e.g. return a cached cross-attention output without running the module); `attend`
    replaces the self-attention call itself. State lives in ``AttendCall.state`` / ``ModuleCall.state``
    (per layer) and ``DenoiserCall.state``: dicts reset when a new generation starts.
    The method-contract suite (``tests/methods/test_method_contract.py``) runs every registered method on
    what the class declares: ``example_knobs``, `oracle`, `dense_limit` and ``invalid_knobs``.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    #: True when the method keeps the model's own attention call (the ``dense`` proof method).
    passthrough: ClassVar[bool] = False
    #: attention the method is installed on: ``"self"`` and/or ``"cross"`` (cross-attention modules get
    #: their processor wrapped for `process`; their attention call is never routed to `attend`)
    targets: ClassVar[frozenset[str]] = frozenset({"self"})
    #: knobs the contract suite applies on every tiny family; a non-passthrough method must run sparse there
    example_knobs: ClassVar[dict[str, Any]] = {}
    #: examples of knobs the config rejects, with the error each raises
    invalid_knobs: ClassVar[tuple[BadKnobs, ...]] = ()

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def make_config(cls, config: Any = None, **kwargs: Any) -> Any:
        """Build the config from a config object or keyword arguments, naming unknown knobs."""
        if config is not None:
            if kwargs:
                raise TypeError(f"pass either a config object or keyword knobs, not both (got {sorted(kwargs)})")
            if not isinstance(config, cls.Config):
                raise TypeError(f"config for {cls.name!r} must be a {cls.Config.__name__}, got {type(config).__name__}")
            return config
        cls.check_knob_names(kwargs)
        missing = [
            f.name
            for f in dataclasses.fields(cls.Config)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in kwargs
        ]
        if missing:
            raise TypeError(f"method {cls.name!r} needs knob(s) {missing}")
        return cls.Config(**kwargs)

    @classmethod
    def check_knob_names(cls, names: Iterable[str]) -> None:
        """Raise `UnknownKnobError` naming the names that are not fields of the method's config, and the accepted
        ones (the one check of knob names: configs, the command line, the report and the demo use it)."""
        known = [f.name for f in dataclasses.fields(cls.Config)]
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise UnknownKnobError(f"unknown knob(s) {unknown} for method {cls.name!r}; accepted knobs: {known}")

    def check_ndim(self, ndim: int) -> None:
        """Raise a ValueError if the config's per-axis knobs (its ``ndim``, None = any) do not fit a
        token grid of ``ndim`` axes, naming those knobs."""
        cfg_ndim = getattr(self.config, "ndim", None)
        if cfg_ndim is None or cfg_ndim == ndim:
            return
        values = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}
        knobs = ", ".join(f"{name}={value}" for name, value in values.items() if isinstance(value, tuple))
        raise ValueError(
            f"{self.name} {knobs} is {cfg_ndim}-D but this model's token grid is {ndim}-D "
            f"({AXIS_NAMES[ndim]}); give ints or {ndim}-tuples"
        )

    def supports(self, adapter: FamilyAdapter) -> str | None:
        """Why this method cannot run on ``adapter``'s model family (the patcher names the family and
        raises a ValueError with it), or None when it can. Checked at apply time, with or without presets."""
        return None

    def new_forward(self, call: DenoiserCall, *args: Any, **kwargs: Any) -> Any:
        """Wrap one denoiser call; ``call.run(*args, **kwargs)`` runs the model's own forward,
        ``call.run_as("full", ...)`` runs it again under another branch label. Installed only when a
        subclass overrides it, and only inside ``steps=``."""
        return call.run(*args, **kwargs)

    def process(self, run: Callable[..., Any], call: ModuleCall) -> Any:
        """Wrap one call of a targeted module's processor: ``run(**overrides)`` runs it (self-attention
        then reaches `attend`) with ``call.arguments`` updated by ``overrides``; returning without
        calling ``run`` skips the module (counted as cached). Only called when overridden, inside ``steps=``."""
        return run()

    @staticmethod
    def plan_attention(
        q: Tensor, k: Tensor, v: Tensor, plan: BlockPlan, call: AttendCall, return_lse: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Block-sparse attention of ``q [B, S, H, D]`` over ``plan`` plus the call's extra (text)
        keys, on the call's backend; ``(out, lse [B, S, H])`` if ``return_lse``."""
        return block_sparse_attention(
            q,
            k,
            v,
            plan,
            extra_k=call.extra_k,
            extra_v=call.extra_v,
            extra_mask=call.extra_mask,
            scale=call.scale,
            backend=call.backend,
            return_lse=return_lse,
        )

    def flop_bound(self, grid: tuple[int, ...], extra_tokens: int = 0) -> FlopBound:
        """FLOP bound of this config on a token ``grid`` with ``extra_tokens`` text keys every query
        also attends: the most a kernel doing only the method's score FLOPs can gain over dense."""
        raise NotImplementedError(f"method {self.name!r} does not state its FLOP bound")

    def module_flop_bound(self, layer: str, grid: tuple[int, ...], extra_tokens: int = 0) -> FlopBound:
        """FLOP bound on the module ``layer``: `flop_bound` here; a calibrated plan (`methods.routed`) weighs the
        choices it makes for that module."""
        return self.flop_bound(grid, extra_tokens)

    def describe_module(self, layer: str) -> str:
        """What runs on the module ``layer`` (``handle.summary()``'s method column): the method's name here."""
        return self.name

    def attend(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        """Attention of image queries ``q [B, S, H, D]`` over image keys + ``call.extra_k``."""
        raise NotImplementedError

    def oracle(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        """What `attend` must return, from the method's exact, slow definition (`methods.naive`):
        ``[B, S, H, D]`` in fp32 or fp64. Small shapes only (``O(S^2)`` memory)."""
        raise NotImplementedError(f"method {self.name!r} has no oracle: add its exact definition to methods/naive.py")

    @classmethod
    def dense_limit(cls, grid: tuple[int, ...]) -> Any | None:
        """A config under which the method is exactly dense attention on ``grid``; None if it has no such limit."""
        return None
