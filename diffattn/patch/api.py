"""`apply_attention`, `remove_attention`, `attention`: resolve what to patch, build the undo records,
install them atomically on one `AttentionHandle`."""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..kernels import Backend, choose_backend
from ..methods import AttentionMethod, get_method
from ..methods.lifecycle import TARGET_KINDS
from ..methods.routed import PlanMethod, as_plan
from ..models import FamilyAdapter, find_adapter
from ..models.denoisers import denoisers_of
from .context_parallel import ulysses_of
from .generation import Generations
from .install import AttentionHandle, installed_on, patching
from .intercept import _PatchedAttention
from .presets import Preset
from .processors import make_wrapper
from .records import ForwardHook, ForwardPreHook, ProcessorSwap, SetAttr, UndoRecord
from .runtime import _Runtime
from .select import LayerSpec, StepSpec, attention_modules, layer_filter, steps_range, with_preset

logger = logging.getLogger("diffattn")


def _serialized(apply: Callable[..., AttentionHandle]) -> Callable[..., AttentionHandle]:
    """Run ``apply(target, ...)`` holding ``target``'s patch locks (`install.patching`): two threads applying
    to one pipeline would otherwise both install, and removing one would orphan the other's hooks."""

    @functools.wraps(apply)
    def locked(target: Any, *args: Any, **kwargs: Any) -> AttentionHandle:
        with patching(target, [d for _, d in denoisers_of(target)]):
            return apply(target, *args, **kwargs)

    return locked


@_serialized
def apply_attention(
    target: Any,
    method: Any = None,
    *,
    layers: LayerSpec = None,
    steps: StepSpec = None,
    backend: str = "auto",
    config: Any = None,
    preset: bool = True,
    temporal_window: int | None = None,
    **knobs: Any,
) -> AttentionHandle:
    """Swap the self-attention of a pipeline (or bare denoiser) for ``method``. Atomic.

    Args:
        target: a diffusers pipeline or denoiser (``UNet2DConditionModel``, ``*Transformer*Model``).
        method: a name from `list_methods()`; or a calibrated `Plan` (`diffattn.calibrate`), or the path of a
            plan ``.json`` file, which sets methods, knobs, modules and steps itself and refuses another model;
            or an `AttentionMethod` instance.
        layers: regex searched in module names, or a predicate; None = the preset's layers, or
            every self-attention if there is no preset (cross-attention too for methods targeting it).
        steps: where the method is active (dense elsewhere): ``(start, end)`` ints are denoising-step
            indices (half-open); floats in [0, 1] are fractions of the schedule, resolved per call
            against ``len(scheduler.timesteps)`` (``(0.0, 0.4)`` = the first 40% of the steps).
            None = the preset's steps, or every step.
        backend: "auto", "triton", "cpu" or "reference"; chosen once, here.
        config: a method config object (instead of keyword knobs), or a `Plan`.
        preset: fill knobs, layers and steps the user left unset from `diffattn.patch.presets` for this
            model family (knobs only if no knob and no config is given). False = no defaults.
            The method's own `supports` check runs either way.
        temporal_window: also run 1-D GNA (sliding, this window over frames, clamped to the frame count)
            on the temporal attention of video UNets and Latte (motion modules, ``temp_attentions``),
            whatever ``method`` is; None = temporal attention stays dense (the default).
        **knobs: the method's config fields, e.g. ``window=(16, 16), stride=(4, 4)``.

    Returns:
        An `AttentionHandle`; ``handle.remove()`` or `remove_attention` restores the originals.
        Re-applying on a patched target replaces the previous patch (also one applied to this pipeline before
        its denoiser was replaced). Applying and removing are serialized per pipeline across threads.
    """
    impl, layers, steps, entry = _method_of(target, method, config, knobs, layers, steps, preset)
    temporal = _temporal_method(temporal_window)
    kinds = _targets_of(impl)
    keep = layer_filter(layers)
    step_range = steps_range(steps)
    pipe_scheduler = None if isinstance(target, nn.Module) else getattr(target, "scheduler", None)
    if step_range is not None and pipe_scheduler is None:
        raise ValueError("steps= needs a pipeline (its scheduler maps timesteps to steps); got a bare denoiser")

    generations = Generations()
    records: list[UndoRecord] = [] if isinstance(target, nn.Module) else list(generations.records(target))
    runtimes: dict[nn.Module, _Runtime] = {}
    swaps: list[UndoRecord] = []
    chosen: Backend | None = None
    processes = type(impl).process is not AttentionMethod.process
    temporal_count = 0
    for attr, denoiser in denoisers_of(target):
        adapter = find_adapter(denoiser)
        impl.check_ndim(adapter.ndim)
        _check_supported(impl, adapter, denoiser, kinds)
        param = next(denoiser.parameters(), None)
        probe = torch.empty(
            0,
            device=param.device if param is not None else "cpu",
            dtype=param.dtype if param is not None else torch.float32,
        )
        chosen = choose_backend(probe, backend)
        rt = runtimes[denoiser] = _Runtime(adapter, impl, chosen, step_range, pipe_scheduler, generations, processes)
        records.append(ForwardPreHook(denoiser, rt.pre_hook, with_kwargs=True))
        records.append(ForwardHook(denoiser, rt.post_hook))  # warns about modules that made no attention call
        if type(impl).new_forward is not AttentionMethod.new_forward:
            records.append(SetAttr(denoiser, "forward", rt.make_forward(denoiser.forward)))
        prefix = f"{attr}." if attr else ""
        for kind in sorted(kinds, key=("self", "cross").index):
            targets = [(prefix + n, m, r) for n, m, r in attention_modules(denoiser, adapter, kind) if keep(prefix + n)]
            for index, (name, module, role) in enumerate(targets):
                patched = _PatchedAttention(name, _unpatched_processor(module), rt, index=index, kind=kind, role=role)
                swaps.append(ProcessorSwap(module, make_wrapper(patched)))
        if temporal is not None:
            over_frames = attention_modules(denoiser, adapter, "temporal")
            for index, (name, module, role) in enumerate((prefix + n, m, r) for n, m, r in over_frames):
                if not keep(name):
                    continue
                patched = _PatchedAttention(name, _unpatched_processor(module), rt, index, "self", role, temporal)
                swaps.append(ProcessorSwap(module, make_wrapper(patched)))
                temporal_count += 1
    if temporal is not None and not temporal_count:
        raise ValueError(
            f"temporal_window={temporal_window} but {type(target).__name__} has no temporal attention module "
            f"(motion modules, temp_attentions) matching layers={layers!r}; drop temporal_window"
        )
    if not swaps:
        origin = " (the preset's layers; pass layers= or preset=False)" if entry and layers == entry.layers else ""
        raise ValueError(f"layers={layers!r}{origin} matches no self-attention module of {type(target).__name__}")

    for swap in swaps:  # ring: refuse before touching anything
        ulysses_of(getattr(swap.original, "_parallel_config", None))
    previous = installed_on(target, runtimes)  # on its denoisers, or on this pipeline before its denoiser was replaced
    for old in previous:
        old.remove()
    assert chosen is not None  # denoisers_of found at least one denoiser
    handle = AttentionHandle(impl, chosen, runtimes, generations, target=target)
    handle.temporal_method = temporal
    handle.preset = entry
    handle._records = records + swaps
    try:
        handle._install()
    except BaseException:
        for old in previous:  # re-applying failed: the previous patch stays as it was
            old._install()
            old.removed = False
        raise
    logger.info("diffattn: %s on %d modules, backend %s", impl.name, len(swaps), chosen)
    return handle


def _method_of(
    target: Any, method: Any, config: Any, knobs: dict[str, Any], layers: LayerSpec, steps: StepSpec, preset: bool
) -> tuple[AttentionMethod, LayerSpec, StepSpec, Preset | None]:
    """``(method instance, layers, steps, preset entry)``: a registered method by name (its preset filling what is
    unset), an `AttentionMethod` instance as given, or a calibrated `Plan` (object, ``config=`` or ``.json`` path),
    which sets its own methods, modules and steps and refuses another model."""
    if isinstance(method, AttentionMethod):
        if knobs or config is not None:
            raise TypeError(f"a method instance carries its config: drop config= and knobs {sorted(knobs)}")
        return method, layers, steps, None
    plan = as_plan(method, config)
    if plan is not None:
        given = [n for n, v in (("knobs", knobs), ("layers", layers), ("steps", steps)) if v]
        if given:
            raise TypeError(f"a plan sets its own methods, knobs, modules and steps: drop {given}")
        impl = PlanMethod.for_target(plan, target)
        if not plan.sparse_modules:
            raise ValueError(f"this plan keeps every module dense (nothing to apply): {'; '.join(plan.notes) or plan}")
        if not plan.satisfied:  # applied as asked, but never silently: its target was not met when it was made
            warnings.warn(f"applying a plan that did not meet its target ({dict(plan.target)}): "
                          f"{'; '.join(plan.notes)}", UserWarning, stacklevel=4)  # fmt: skip
        return impl, impl.selects, None, None
    method_cls = get_method(method)
    knobs, layers, steps, entry = with_preset(target, method, knobs, config, layers, steps, preset)
    return method_cls(method_cls.make_config(config, **knobs)), layers, steps, entry


def _temporal_method(window: int | None) -> AttentionMethod | None:
    """Sliding 1-D GNA for temporal attention, or None; a ValueError for a window that is not an int >= 1."""
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"temporal_window={window!r} must be an int >= 1 (frames each frame attends) or None")
    gna = get_method("gna")
    return gna(gna.make_config(None, window=window, stride=1))


def _unpatched_processor(module: nn.Module) -> Any:
    """The processor under a previous diffattn patch of ``module`` (re-applying removes that patch
    before installing, so the new wrapper must delegate to what the old one wrapped, not to it)."""
    processor = module.processor
    patch = getattr(processor, "diffattn_patch", None)
    return processor if patch is None else patch.original


def _targets_of(impl: AttentionMethod) -> frozenset[str]:
    kinds = impl.targets
    if not isinstance(kinds, frozenset | set) or not kinds or not set(kinds) <= TARGET_KINDS:
        raise TypeError(
            f"method {impl.name!r} has targets={kinds!r}; it must be a non-empty subset of {sorted(TARGET_KINDS)}"
        )
    return frozenset(kinds)


def _check_supported(impl: AttentionMethod, adapter: FamilyAdapter, denoiser: nn.Module, kinds: frozenset[str]) -> None:
    """A ValueError naming the model family and what the method needs, if it cannot run here."""
    family = f"{adapter.family_key(denoiser)} models ({type(denoiser).__name__})"
    reason = impl.supports(adapter)
    if reason is None and "cross" in kinds and not attention_modules(denoiser, adapter, "cross"):
        reason = "it needs separate cross-attention modules, and this model puts text and image in one joint attention"
    if reason is not None:
        raise ValueError(f"method {impl.name!r} does not support {family}: {reason}")


def remove_attention(target: Any) -> int:
    """Remove whatever diffattn installed on ``target``'s denoisers, or through ``target`` (also after its
    denoiser was replaced). Returns how many handles."""
    with patching(target, [d for _, d in denoisers_of(target)]) as handles:
        for h in handles:
            h.remove()
    return len(handles)


@contextlib.contextmanager
def attention(target: Any, method: Any = None, **kwargs: Any) -> Iterator[AttentionHandle]:
    """``with attention(pipe, "gna", window=16): ...`` (or ``attention(pipe, plan)``) restores the pipeline on exit,
    even on error."""
    handle = apply_attention(target, method, **kwargs)
    try:
        yield handle
    finally:
        handle.remove()
