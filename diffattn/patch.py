"""Install and remove attention methods on diffusers denoisers. Nothing else.

How (DESIGN §2a): a forward pre-hook on the denoiser records the token layout and the denoising
step of each call; every selected self-attention module gets a wrapper processor that delegates
to the original one (so projections, norms, RoPE, LoRA and IP-Adapter keep running) and, while it
runs, intercepts the single ``F.scaled_dot_product_attention`` call through a
``TorchFunctionMode`` to route it to the method. Removing restores the original processor objects.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import operator
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .kernels import choose_backend
from .layout import SELF, LayoutError, ModuleRole, TokenLayout, TokenSplit
from .methods import AttendCall, AttentionMethod, get_method
from .models import FamilyAdapter, family_key, find_adapter
from .presets import Preset, resolve_preset

logger = logging.getLogger("diffattn")

DENOISER_ATTRS = ("unet", "transformer", "transformer_2")
LayerSpec = str | Callable[[str], bool] | None
StepSpec = tuple[int, int] | tuple[float, float] | range | None

# denoiser -> the handle currently installed on it (weak: a dropped pipeline drops its entry)
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, AttentionHandle] = weakref.WeakKeyDictionary()


@dataclass
class CallStats:
    """Per-module counts of intercepted attention calls."""

    sparse: int = 0
    fallback: int = 0
    dense: int = 0  # passthrough method or outside ``steps``


@dataclass(frozen=True)
class StepFraction:
    """``steps=(start, end)`` as fractions of the schedule: of ``n`` steps, step ``i`` is active
    iff ``start <= i / n < end`` (so (0.0, 0.4) of 50 steps is steps 0-19)."""

    start: float
    stop: float

    def resolve(self, n: int) -> range:
        eps = 1e-9  # 0.4 * 50 is 20.000000000000004 in floats
        return range(math.ceil(self.start * n - eps), math.ceil(self.stop * n - eps))


@dataclass
class _Runtime:
    """Per denoiser: what the pre-hook recorded for the current call, shared by its processors."""

    adapter: FamilyAdapter
    method: AttentionMethod
    backend: str
    steps: range | StepFraction | None
    scheduler: Any
    stats: dict[str, CallStats] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)
    local: threading.local = field(default_factory=threading.local)

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        call = self.adapter.bind(module, args, kwargs)
        # layout (issue 10): a call without a readable grid runs dense, counted, with the reason
        try:
            self.local.layout, self.local.why = self.adapter.read_layout(module, call), ""
        except (LayoutError, KeyError, TypeError, IndexError) as e:
            self.local.layout, self.local.why = None, f"no token grid for this call: {e}"
        self.local.observed = None  # (position, count) of dense tokens a joint module of this call showed
        t = self.adapter.read_timestep(call)
        self.local.timestep = None if t is None else float(t.flatten()[0]) * self.adapter.timestep_divisor
        self.local.active = self.steps is None or self._in_steps(self.local.timestep)

    def _in_steps(self, timestep: float | None) -> bool:
        """Whether the step of ``timestep`` (scheduler units) is in ``steps``: the nearest entry of
        ``scheduler.timesteps`` gives the index, so repeated calls per step (CFG) agree."""
        timesteps = getattr(self.scheduler, "timesteps", None)
        if timestep is None or timesteps is None or len(timesteps) == 0:
            raise RuntimeError("steps= needs the denoiser's timestep and a scheduler with set timesteps")
        n = len(timesteps)
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
        return int(torch.argmin((timesteps.float().cpu() - timestep).abs())) in steps

    @property
    def layout(self) -> TokenLayout | None:
        return getattr(self.local, "layout", None)

    @property
    def why(self) -> str:
        return getattr(self.local, "why", "") or "no token layout recorded for this call"

    @property
    def active(self) -> bool:
        return getattr(self.local, "active", True)

    @property
    def timestep(self) -> float | None:
        return getattr(self.local, "timestep", None)


class _Interceptor(TorchFunctionMode):
    """Routes the one SDPA call of a wrapped processor to the method."""

    def __init__(self, target: _PatchedAttention) -> None:
        super().__init__()
        self.target = target

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self.target.attend(func, args, kwargs)
        out = func(*args, **kwargs)
        if func is torch.cat:  # layout (issue 10): how the processor joins text and image tokens
            self.target.saw_cat(args, kwargs, out)
        return out


_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class _PatchedAttention:
    """Wrapper processor state and logic; the callable shell is `_make_wrapper`'s."""

    def __init__(
        self, name: str, original: Any, runtime: _Runtime, index: int = 0, role: ModuleRole = SELF
    ) -> None:
        self.name = name
        self.index = index
        self.original = original
        self.runtime = runtime
        self.role = role
        self.cats: list[tuple[int, tuple[int, ...]]] = []  # (total, piece lengths) of this run's seq concats
        runtime.stats.setdefault(name, CallStats())

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.cats = []
        with _Interceptor(self):
            return self.original(*args, **kwargs)

    # --- layout (issue 10): the split of one call's sequence into the grid and dense tokens ---
    def saw_cat(self, args: tuple, kwargs: dict[str, Any], out: Any) -> None:
        """Record a sequence-axis ``torch.cat`` of ``[B, S, H, D]`` / ``[B, H, S, D]`` / ``[B, S, C]``
        pieces (a joint processor joining text and image q/k/v)."""
        pieces = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if not isinstance(out, Tensor) or out.dim() < 3 or not isinstance(pieces, list | tuple) or len(pieces) < 2:
            return
        dim = dim % out.dim()
        if dim in (0, out.dim() - 1):
            return
        self.cats.append((out.shape[dim], tuple(int(t.shape[dim]) for t in pieces)))

    def split(self, seq: int) -> TokenSplit | str:
        rt = self.runtime
        layout = rt.layout
        if layout is None:
            return rt.why
        segments = next((pieces for total, pieces in reversed(self.cats) if total == seq), None)
        split = layout.split(seq, self.role, segments, getattr(rt.local, "observed", None))
        if isinstance(split, TokenSplit) and split.joint is not None:
            rt.local.observed = split.joint
        return split
    # --- end layout ---

    def _fallback(self, func: Callable, args: tuple, kwargs: dict, reason: str) -> Tensor:
        rt = self.runtime
        rt.stats[self.name].fallback += 1
        if self.name not in rt.warned:
            rt.warned.add(self.name)
            logger.warning("diffattn: %s falls back to dense attention: %s", self.name, reason)
        return func(*args, **kwargs)

    def attend(self, func: Callable, args: tuple, kwargs: dict[str, Any]) -> Tensor:
        """Replace ``F.scaled_dot_product_attention(q, k, v, ...)`` on ``[B, H, S, D]`` tensors."""
        rt = self.runtime
        p = dict(zip(_SDPA_PARAMS, args))
        p.update(kwargs)
        q, k, v = p["query"], p["key"], p["value"]
        if rt.method.passthrough or not rt.active:
            rt.stats[self.name].dense += 1
            return func(*args, **kwargs)
        # layout (issue 10): grouped-query heads, image-only queries over image + dense keys, masks
        # that are the same for every image query
        hq, hk = q.shape[1], k.shape[1]
        if hq != hk and (hq % hk or v.shape[1] != hk):
            return self._fallback(func, args, kwargs, f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in heads")
        if p.get("is_causal") or p.get("dropout_p", 0.0):
            return self._fallback(func, args, kwargs, "causal or dropout attention")
        seq = k.shape[-2]
        split = self.split(seq)
        if isinstance(split, str):
            return self._fallback(func, args, kwargs, split)
        grid, img, dense = split.grid, split.image, split.dense
        q_rows = slice(0, seq)
        if q.shape[-2] != seq:  # queries of the image only (the processor joins dense tokens to k, v alone)
            if q.shape[-2] != img.stop - img.start:
                return self._fallback(
                    func, args, kwargs, f"{q.shape[-2]} queries are neither the {seq} keys nor the grid {grid}"
                )
            q_rows = slice(0, q.shape[-2])
            q = F.pad(q, (0, 0, img.start, seq - img.stop))  # [B, H, S, D]; only the image rows are read
        key_valid = _key_padding(p.get("attn_mask"), q.shape[0], seq, img)
        if key_valid is False:
            return self._fallback(
                func, args, kwargs, f"attention mask of shape {tuple(p['attn_mask'].shape)} is not a key-padding mask"
            )
        if isinstance(key_valid, Tensor) and not bool(key_valid[:, img].all()):
            return self._fallback(func, args, kwargs, "the attention mask hides image tokens")
        if hq != hk:
            k, v = (t.repeat_interleave(hq // hk, dim=1) for t in (k, v))
        qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))  # [B, S, H, D] views

        def dense_part(t: Tensor, axis: int) -> Tensor:  # the dense tokens (text, references) of t, in order
            parts = [t.narrow(axis, s.start, s.stop - s.start) for s in dense]
            return parts[0] if len(parts) == 1 else torch.cat(parts, axis)

        call = AttendCall(
            grid=grid,
            extra_k=dense_part(ks, 1) if dense else None,
            extra_v=dense_part(vs, 1) if dense else None,
            extra_mask=dense_part(key_valid, 1) if dense and isinstance(key_valid, Tensor) else None,
            scale=p.get("scale"),
            backend=rt.backend,
            layer=self.name,
            layer_index=self.index,
            timestep=rt.timestep,
        )
        out_img = rt.method.attend(qs[:, img], ks[:, img], vs[:, img], call).transpose(1, 2)  # [B, H, S_img, D]
        rt.stats[self.name].sparse += 1
        if not dense or q_rows.stop != seq:
            return out_img
        # dense queries (text, references, registers) attend every key, with the model's own mask
        mask = p.get("attn_mask")
        if mask is not None and mask.dim() >= 2 and mask.shape[-2] == seq:  # per-query rows: keep the dense ones
            mask = dense_part(mask, mask.dim() - 2)
        dense_kwargs = {k2: p[k2] for k2 in ("scale",) if p.get(k2) is not None}
        out_dense = func(dense_part(q, 2), k, v, attn_mask=mask, **dense_kwargs)
        before = img.start  # dense tokens ahead of the grid
        parts = [out_dense[:, :, :before], out_img, out_dense[:, :, before:]]
        return torch.cat([t for t in parts if t.shape[2]], dim=2)


def _key_padding(mask: Tensor | None, batch: int, seq: int, img: slice | None = None) -> Tensor | None | bool:
    """``[B, S]`` bool validity of keys if ``mask`` only pads keys (for the queries ``img``: a per-query
    mask whose image rows, over all heads, are equal counts too); None if no mask; False if the mask is
    of another kind (differing rows, soft biases)."""
    if mask is None:
        return None
    if mask.shape[-1] != seq:
        return False
    if img is not None and mask.dim() >= 2 and mask.shape[-2] == seq and seq > 1:
        rows = mask.reshape(mask.shape[0] if mask.dim() > 2 else 1, -1, seq, seq)[:, :, img]  # [B|1, H|1, S_img, S]
        if not bool((rows == rows[:, :1, :1]).all()):
            return False
        mask = rows[:, 0, 0]  # [B|1, S]
    if mask.numel() not in (seq, batch * seq):
        return False
    flat = mask.reshape(-1, seq).expand(batch, seq)
    if flat.dtype == torch.bool:
        return flat
    valid = flat == 0
    if not bool((flat[~valid] <= -1e4).all()):
        return False
    return valid


def _make_wrapper(patched: _PatchedAttention) -> Any:
    """A processor object that runs ``patched``, keeps the original ``__call__`` signature (diffusers
    filters kwargs by it) and is an ``nn.Module`` sharing the original's weights when the original
    is one (IP-Adapter), so state_dict keys and ``.to()`` see the very same tensors."""
    original = patched.original
    signature = inspect.signature(original.__call__)

    def call(*args: Any, **kwargs: Any) -> Any:
        return patched.run(*args, **kwargs)

    call.__signature__ = signature  # type: ignore[attr-defined]
    if isinstance(original, nn.Module):
        wrapper: Any = _ModuleWrapper(original, call)
    else:
        wrapper = _PlainWrapper()
    object.__setattr__(wrapper, "__call__", call)  # what inspect.signature(processor.__call__) finds
    object.__setattr__(wrapper, "diffattn_patch", patched)
    for attr in ("_attention_backend", "_parallel_config"):
        if hasattr(original, attr):
            object.__setattr__(wrapper, attr, getattr(original, attr))
    return wrapper


def _reduce_to_original(wrapper: Any) -> tuple:
    """Pickling or deep-copying a patched module stores the *original* processor, so saved or copied
    pipelines never carry diffattn objects. ``itemgetter(0)((x,))`` is ``x`` itself (pickle memoizes
    it, so a processor shared by many modules stays shared) and needs no diffattn at load time."""
    return operator.itemgetter(0), ((wrapper.diffattn_patch.original,),)


class _PlainWrapper:
    """Shell for plain-object processors; ``__call__`` is set per instance."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["__call__"](*args, **kwargs)

    def __reduce_ex__(self, protocol: object) -> tuple:
        return _reduce_to_original(self)

    def __repr__(self) -> str:
        return f"diffattn({self.__dict__['diffattn_patch'].original!r})"


class _ModuleWrapper(nn.Module):
    """Shell for ``nn.Module`` processors: shares the original's parameter, buffer and child dicts."""

    def __init__(self, original: nn.Module, call: Callable[..., Any]) -> None:
        super().__init__()
        self._parameters = original._parameters
        self._buffers = original._buffers
        self._modules = original._modules
        object.__setattr__(self, "_diffattn_call", call)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._diffattn_call(*args, **kwargs)

    def __reduce_ex__(self, protocol: object) -> tuple:
        return _reduce_to_original(self)


class _UnpatchedReduce:
    """Instance-level ``__reduce_ex__`` of a patched denoiser (pickle and ``copy`` look it up on the
    instance): the state it reduces to lacks diffattn's pre-forward hook and this attribute, so a
    pickled or deep-copied denoiser (or pipeline) is the unpatched one."""

    def __init__(self, denoiser: nn.Module, hook_ids: set[int]) -> None:
        self.denoiser = weakref.ref(denoiser)
        self.hook_ids = hook_ids

    def __call__(self, protocol: int) -> tuple:
        denoiser = self.denoiser()
        assert denoiser is not None
        rv = type(denoiser).__reduce_ex__(denoiser, protocol)
        state = dict(rv[2])
        state.pop("__reduce_ex__", None)
        for attr in ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs"):
            hooks = state[attr]
            state[attr] = type(hooks)((k, v) for k, v in hooks.items() if k not in self.hook_ids)
        return (rv[0], rv[1], state, *rv[3:])


@dataclass
class _Installed:
    module: nn.Module
    original: Any
    backend_attr: tuple[bool, Any]  # (had _attention_backend, its value) on the original


class AttentionHandle:
    """An installed patch. ``remove()`` restores every original processor; usable as a context manager."""

    def __init__(self, method: AttentionMethod, backend: str, runtimes: dict[nn.Module, _Runtime]) -> None:
        self.method = method
        self.backend = backend
        self._runtimes = runtimes
        self._installed: list[_Installed] = []
        self._hooks: list[Any] = []
        self._plan: list[tuple[nn.Module, str, nn.Module, ModuleRole]] = []
        self.removed = False
        #: the `Preset` that filled unset knobs/layers/steps, or None
        self.preset: Preset | None = None

    @property
    def config(self) -> Any:
        return self.method.config

    @property
    def modules(self) -> list[str]:
        return [name for rt in self._runtimes.values() for name in rt.stats]

    def stats(self) -> dict[str, CallStats]:
        """Per patched module (qualified name): sparse / fallback / dense call counts."""
        return {name: s for rt in self._runtimes.values() for name, s in rt.stats.items()}

    @property
    def sparse_calls(self) -> int:
        return sum(s.sparse for s in self.stats().values())

    @property
    def fallback_calls(self) -> int:
        return sum(s.fallback for s in self.stats().values())

    def _install(self, plan: list[tuple[nn.Module, str, nn.Module, ModuleRole]]) -> None:
        """Install all or nothing: on any error, undo what was done and re-raise."""
        self._plan = plan
        try:
            for denoiser, rt in self._runtimes.items():
                hook = denoiser.register_forward_pre_hook(rt.pre_hook, with_kwargs=True)
                self._hooks.append(hook)
                denoiser.__dict__["__reduce_ex__"] = _UnpatchedReduce(denoiser, {hook.id})
            seen: dict[nn.Module, int] = {}
            for denoiser, name, module, role in plan:
                original = module.processor
                index = seen[denoiser] = seen.get(denoiser, -1) + 1
                patched = _PatchedAttention(name, original, self._runtimes[denoiser], index=index, role=role)
                wrapper = _make_wrapper(patched)
                had = hasattr(original, "_attention_backend")
                record = _Installed(module, original, (had, getattr(original, "_attention_backend", None)))
                _set_processor(module, wrapper)
                self._installed.append(record)
                if had:  # flash/sage backends bypass SDPA: force the native path while patched
                    original._attention_backend = _native_backend()
            for denoiser in self._runtimes:
                _ACTIVE[denoiser] = self
        except BaseException:
            self._uninstall()
            raise

    def _uninstall(self) -> None:
        for record in reversed(self._installed):
            had, value = record.backend_attr
            if had:
                record.original._attention_backend = value
            current = record.module.processor
            if (
                getattr(current, "diffattn_patch", None) is not None
                and current.diffattn_patch.original is record.original
            ):
                _set_processor(record.module, record.original)
            else:
                logger.warning("diffattn: the processor of %s was replaced after patching; leaving it", record.module)
        self._installed.clear()
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for denoiser in self._runtimes:
            if isinstance(denoiser.__dict__.get("__reduce_ex__"), _UnpatchedReduce):
                del denoiser.__dict__["__reduce_ex__"]
        for denoiser in self._runtimes:
            if _ACTIVE.get(denoiser) is self:
                del _ACTIVE[denoiser]

    def remove(self) -> None:
        """Restore the original processors, backends and hooks. Idempotent."""
        if not self.removed:
            self._uninstall()
            self.removed = True

    def __enter__(self) -> AttentionHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else f"{len(self._installed)} modules"
        return f"AttentionHandle({self.method.name}, {self.config}, backend={self.backend!r}, {state})"


def _set_processor(module: nn.Module, processor: Any) -> None:
    """``module.set_processor``; plain assignment for attention classes without it (Mochi)."""
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:
        module.processor = processor


def _native_backend() -> Any:
    from diffusers.models.attention_dispatch import AttentionBackendName

    return AttentionBackendName.NATIVE


def _uncompiled(module: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper runs: hooks and processors belong on it (the compiled
    wrapper calls it, so they take effect there too, after a guard-triggered recompile)."""
    return getattr(module, "_orig_mod", module)


def denoisers_of(target: Any) -> list[tuple[str, nn.Module]]:
    """``[(attribute, denoiser)]`` of a pipeline, or ``[("", target)]`` for a bare denoiser."""
    if isinstance(target, nn.Module):
        return [("", _uncompiled(target))]
    found = [
        (a, _uncompiled(getattr(target, a))) for a in DENOISER_ATTRS if isinstance(getattr(target, a, None), nn.Module)
    ]
    if not found:
        raise TypeError(
            f"cannot patch a {type(target).__name__}: expected a diffusers pipeline with one of "
            f"{DENOISER_ATTRS} or a denoiser nn.Module"
        )
    return found


def _attention_modules(denoiser: nn.Module, adapter: FamilyAdapter) -> list[tuple[str, nn.Module, ModuleRole]]:
    """Attention modules over the token grid and their roles (layout, issue 10); temporal attention
    (1-D over frames) stays dense."""
    found = []
    for name, m in denoiser.named_modules():
        if hasattr(m, "processor") and callable(m.processor):
            role = adapter.role(denoiser, name, m)
            if role is not None and role.kind == "self":
                found.append((name, m, role))
    return found


def _layer_filter(layers: LayerSpec) -> Callable[[str], bool]:
    if layers is None:
        return lambda name: True
    if isinstance(layers, str):
        try:
            pattern = re.compile(layers)
        except re.error as e:
            raise ValueError(f"layers={layers!r} is not a valid regular expression: {e}") from e
        return lambda name: pattern.search(name) is not None
    if callable(layers):
        return layers
    raise TypeError(f"layers={layers!r} must be a regex string, a predicate on module names, or None")


def _steps_range(steps: StepSpec) -> range | StepFraction | None:
    if steps is None:
        return None
    if (
        isinstance(steps, tuple)
        and len(steps) == 2
        and any(isinstance(s, float) for s in steps)
        and all(isinstance(s, int | float) and not isinstance(s, bool) for s in steps)
    ):
        start, stop = (float(s) for s in steps)
        if not 0.0 <= start < stop <= 1.0:  # also rejects NaN
            raise ValueError(
                f"steps={steps!r} as fractions of the schedule must satisfy 0.0 <= start < end <= 1.0"
            )
        return StepFraction(start, stop)
    if (
        isinstance(steps, tuple)
        and len(steps) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in steps)
    ):
        steps = range(*steps)
    if not isinstance(steps, range) or steps.step != 1:
        raise TypeError(
            f"steps={steps!r} must be a (start, end) tuple of ints (step indices), of floats in [0, 1] "
            "(fractions of the schedule) or a range with step 1"
        )
    if steps.start < 0 or steps.stop <= steps.start:
        raise ValueError(f"steps={steps.start}..{steps.stop} is empty or negative; need 0 <= start < end")
    return steps


def apply_attention(
    target: Any,
    method: str,
    *,
    layers: LayerSpec = None,
    steps: StepSpec = None,
    backend: str = "auto",
    config: Any = None,
    preset: bool = True,
    **knobs: Any,
) -> AttentionHandle:
    """Swap the self-attention of a pipeline (or bare denoiser) for ``method``. Atomic.

    Args:
        target: a diffusers pipeline or denoiser (``UNet2DConditionModel``, ``*Transformer*Model``).
        method: a name from `list_methods()`.
        layers: regex searched in module names, or a predicate; None = the preset's layers, or
            every self-attention if there is no preset.
        steps: where the method is active (dense elsewhere): ``(start, end)`` ints are denoising-step
            indices (half-open); floats in [0, 1] are fractions of the schedule, resolved per call
            against ``len(scheduler.timesteps)`` (``(0.0, 0.4)`` = the first 40% of the steps).
            None = the preset's steps, or every step.
        backend: "auto", "triton", "cpu" or "reference"; chosen once, here.
        config: a method config object (instead of keyword knobs).
        preset: fill knobs, layers and steps the user left unset from `diffattn.presets` for this
            model family (knobs only if no knob and no config is given). False = no defaults.
        **knobs: the method's config fields, e.g. ``window=(16, 16), stride=(4, 4)``.

    Returns:
        An `AttentionHandle`; ``handle.remove()`` or `remove_attention` restores the originals.
        Re-applying on a patched target replaces the previous patch.
    """
    method_cls = get_method(method)
    entry: Preset | None = None
    if not isinstance(preset, bool):
        raise TypeError(f"preset={preset!r} must be True or False")
    if preset:
        family = family_key(denoisers_of(target)[0][1])
        user_steps = steps
        knobs, layers, steps, entry = resolve_preset(method, family, knobs, config, layers, steps)
        if user_steps is None and steps is not None and isinstance(target, nn.Module):
            logger.warning(
                "diffattn: the %s preset for %s limits steps to %s, which needs the pipeline's scheduler; "
                "a bare denoiser runs %s on every step (pass the pipeline to keep the preset's steps)",
                method,
                family,
                steps,
                method,
            )
            steps = None
    impl = method_cls(method_cls.make_config(config, **knobs))
    keep = _layer_filter(layers)
    step_range = _steps_range(steps)
    pipe_scheduler = None if isinstance(target, nn.Module) else getattr(target, "scheduler", None)
    if step_range is not None and pipe_scheduler is None:
        raise ValueError("steps= needs a pipeline (its scheduler maps timesteps to steps); got a bare denoiser")

    plan: list[tuple[nn.Module, str, nn.Module, ModuleRole]] = []
    runtimes: dict[nn.Module, _Runtime] = {}
    chosen = None
    for attr, denoiser in denoisers_of(target):
        adapter = find_adapter(denoiser)
        impl.check_ndim(adapter.ndim)
        param = next(denoiser.parameters(), None)
        probe = torch.empty(
            0,
            device=param.device if param is not None else "cpu",
            dtype=param.dtype if param is not None else torch.float32,
        )
        chosen = choose_backend(probe, backend)
        runtimes[denoiser] = _Runtime(adapter, impl, chosen, step_range, pipe_scheduler)
        prefix = f"{attr}." if attr else ""
        plan += [(denoiser, prefix + n, m, r) for n, m, r in _attention_modules(denoiser, adapter) if keep(prefix + n)]
    if not plan:
        origin = " (the preset's layers; pass layers= or preset=False)" if entry and layers == entry.layers else ""
        raise ValueError(f"layers={layers!r}{origin} matches no self-attention module of {type(target).__name__}")

    previous = {_ACTIVE[d] for d in runtimes if d in _ACTIVE}
    for old in previous:
        old.remove()
    handle = AttentionHandle(impl, chosen or backend, runtimes)
    handle.preset = entry
    try:
        handle._install(plan)
    except BaseException:
        for old in previous:  # re-applying failed: the previous patch stays as it was
            old._install(old._plan)
            old.removed = False
        raise
    logger.info("diffattn: %s on %d modules, backend %s", method, len(plan), chosen)
    return handle


def remove_attention(target: Any) -> int:
    """Remove whatever diffattn installed on ``target``'s denoisers. Returns how many handles."""
    handles = {_ACTIVE[d] for _, d in denoisers_of(target) if d in _ACTIVE}
    for h in handles:
        h.remove()
    return len(handles)


@contextlib.contextmanager
def attention(target: Any, method: str, **kwargs: Any) -> Iterator[AttentionHandle]:
    """``with attention(pipe, "gna", window=16): ...`` restores the pipeline on exit, even on error."""
    handle = apply_attention(target, method, **kwargs)
    try:
        yield handle
    finally:
        handle.remove()
