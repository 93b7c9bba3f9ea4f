"""What gets patched: the denoisers of a target, their self-/cross-attention modules, ``layers=`` and
``steps=`` parsing, and filling unset arguments from `diffattn.patch.presets`."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..layout import ModuleRole
from ..models import FamilyAdapter, family_key
from ..models.denoisers import denoisers_of
from .presets import Preset, resolve_preset

logger = logging.getLogger("diffattn")

LayerSpec = str | Callable[[str], bool] | None
StepSpec = tuple[int, int] | tuple[float, float] | range | None


@dataclass(frozen=True)
class StepFraction:
    """``steps=(start, end)`` as fractions of the schedule: of ``n`` steps, step ``i`` is active
    iff ``start <= i / n < end`` (so (0.0, 0.4) of 50 steps is steps 0-19)."""

    start: float
    stop: float

    def resolve(self, n: int) -> range:
        eps = 1e-9  # 0.4 * 50 is 20.000000000000004 in floats
        return range(math.ceil(self.start * n - eps), math.ceil(self.stop * n - eps))


def attention_modules(
    denoiser: nn.Module, adapter: FamilyAdapter, kind: str = "self"
) -> list[tuple[str, nn.Module, ModuleRole | None]]:
    """``[(name, module, role)]`` of the attention modules over the denoiser's token grid (the modules the
    adapter gives a ``self`` role) or, for ``kind="cross"``, of its separate cross-attention modules: those
    the adapter gives no role and that are ``is_cross_attention`` or named ``attn2`` / ``*cross_attn*``
    (role None), or for ``kind="temporal"`` of its temporal attention (1-D over frames; patched only on
    request, with ``temporal_window``)."""
    found: list[tuple[str, nn.Module, ModuleRole | None]] = []
    for name, m in denoiser.named_modules():
        if not (hasattr(m, "processor") and callable(m.processor)):
            continue
        role = adapter.role(denoiser, name, m)
        if kind in ("self", "temporal") and role is not None and role.kind == kind:
            found.append((name, m, role))
        elif kind == "cross" and role is None and _is_cross(name, m):
            found.append((name, m, None))
    return found


def _is_cross(name: str, module: nn.Module) -> bool:
    named = name.endswith(("attn2", "cross_attn", "cross_attention"))
    return named or bool(getattr(module, "is_cross_attention", False))


def layer_filter(layers: LayerSpec) -> Callable[[str], bool]:
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


def steps_range(steps: StepSpec) -> range | StepFraction | None:
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


def with_preset(
    target: Any, method: str, knobs: dict[str, Any], config: Any, layers: LayerSpec, steps: StepSpec, preset: bool
) -> tuple[dict[str, Any], LayerSpec, StepSpec, Preset | None]:
    """``(knobs, layers, steps, preset entry)``: what the user left unset filled from the preset of
    ``method`` on the target's family (nothing when ``preset`` is False)."""
    if not isinstance(preset, bool):
        raise TypeError(f"preset={preset!r} must be True or False")
    if not preset:
        return knobs, layers, steps, None
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
    return knobs, layers, steps, entry
