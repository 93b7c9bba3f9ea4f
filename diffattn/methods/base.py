"""What a method is: a frozen, self-validating config plus how each image query attends.

A method sees image tokens ``[B, S, H, D]`` laid out on a grid (frames, rows, columns) and the
optional extra keys every query must also attend (text tokens of joint attention). It describes
*what* is attended (usually by building a `BlockPlan`) and leaves *how* to `diffattn.kernels`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..kernels import Backend, BlockPlan, block_sparse_attention, get_backend

AXIS_NAMES = {1: "tokens", 2: "rows, columns", 3: "frames, rows, columns"}


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

    def __post_init__(self) -> None:
        if isinstance(self.backend, str):
            object.__setattr__(self, "backend", get_backend(self.backend))


#: ``(knobs, exception type, message regex)``: knobs a config must reject, and the error it raises
BadKnobs = tuple[dict[str, Any], type[Exception], str]


class AttentionMethod:
    """Base class of registered methods. Subclasses set ``name`` and ``Config``.

    The method-contract suite (``tests/test_method_contract.py``) runs every registered method on
    what the class declares: ``example_knobs``, `oracle`, `dense_limit` and ``invalid_knobs``.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    #: True when the method keeps the model's own attention call (the ``dense`` proof method).
    passthrough: ClassVar[bool] = False
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
        known = [f.name for f in dataclasses.fields(cls.Config)]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise TypeError(f"unknown knob(s) {unknown} for method {cls.name!r}; accepted knobs: {known}")
        missing = [
            f.name
            for f in dataclasses.fields(cls.Config)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in kwargs
        ]
        if missing:
            raise TypeError(f"method {cls.name!r} needs knob(s) {missing}")
        return cls.Config(**kwargs)

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
