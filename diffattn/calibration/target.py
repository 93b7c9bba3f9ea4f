"""`CalibrationTarget`: what a calibrated plan must keep (quality) and/or reach (speed), checked once here."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

BOUND_KINDS = ("flop", "tile")


@dataclasses.dataclass(frozen=True)
class CalibrationTarget:
    """What calibration aims for. At least one of the four targets must be set.

    max_attn_error: per call, the relative output error ``||o - o_dense|| / ||o_dense||`` of a module's attention
        on the sampled queries (all heads) must stay at or below this, for every sampled call; in (0, 2].
    min_mass: per call, the mean kept attention mass ``exp(lse - lse_dense)`` of the sampled queries must be at
        least this, for every sampled call; in (0, 1]. Proxy candidates have no kept mass and are left out.
    min_psnr: the images of the plan must reach this PSNR in dB against the dense images of the calibration
        inputs (mean over the inputs); > 0. Found by generating with a few plans (a search over error thresholds).
    min_bound: the plan's predicted end-to-end speedup bound must reach this (> 1): calibration then picks the
        choices that keep the most quality at that bound (with the quality targets above, among the choices that
        meet them).
    bound: which speedup bound is the cost: ``"flop"`` (attended pairs, what `diffattn compare` reports) or
        ``"tile"`` (`diffattn.sim`'s tile bound on H100 FNA tiles, which rewards blocked windows; adds blocked
        strides to the candidates).
    """

    max_attn_error: float | None = None
    min_mass: float | None = None
    min_psnr: float | None = None
    min_bound: float | None = None
    bound: str = "flop"

    def __post_init__(self) -> None:
        ranges = {
            "max_attn_error": (0.0, 2.0, "in (0, 2]"),
            "min_mass": (0.0, 1.0, "in (0, 1]"),
            "min_psnr": (0.0, math.inf, "> 0 (dB)"),
            "min_bound": (1.0, math.inf, "> 1 (a speedup)"),
        }
        for name, (lo, hi, text) in ranges.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name}={value!r} must be a number {text}")
            if not (math.isfinite(value) and lo < value <= hi):
                raise ValueError(f"{name}={value!r} must be {text}")
            object.__setattr__(self, name, float(value))
        if self.bound not in BOUND_KINDS:
            raise ValueError(f"bound={self.bound!r} must be one of {BOUND_KINDS}")
        if all(getattr(self, n) is None for n in ranges):
            raise ValueError(
                "a calibration target needs at least one of max_attn_error (e.g. 0.05), min_mass (e.g. 0.95), "
                "min_psnr (e.g. 30) or min_bound (e.g. 2.0)"
            )

    @property
    def quality_measure(self) -> str:
        """What "more quality" means when a speed target is traded against it: lower ``error``, or higher kept
        ``mass`` when the only per-call target is ``min_mass``."""
        return "mass" if self.min_mass is not None and self.max_attn_error is None else "error"

    def items(self) -> tuple[tuple[str, Any], ...]:
        """The set fields, as ``(name, value)`` (recorded in the plan)."""
        values = ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
        return tuple((name, value) for name, value in values if value is not None)

    def __str__(self) -> str:
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.items())

    @classmethod
    def parse(cls, text: str) -> CalibrationTarget:
        """``"max_attn_error=0.05"``, ``"min_mass=0.9,min_bound=2"`` (comma or space separated NAME=VALUE)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for item in text.replace(",", " ").split():
            name, sep, raw = item.partition("=")
            if not sep or name not in fields:
                raise ValueError(f"target item {item!r} is not NAME=VALUE with NAME one of {sorted(fields)}")
            if name == "bound":
                values[name] = raw
                continue
            try:
                values[name] = float(raw)
            except ValueError:
                raise ValueError(f"target {name}={raw!r} is not a number") from None
        return cls(**values)

    @classmethod
    def of(cls, target: Any) -> CalibrationTarget:
        """A target from a `CalibrationTarget`, a mapping of its fields, or its text form (`parse`)."""
        if isinstance(target, cls):
            return target
        if isinstance(target, str):
            return cls.parse(target)
        if isinstance(target, Mapping):
            unknown = set(target) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                known = [f.name for f in dataclasses.fields(cls)]
                raise TypeError(f"unknown target field(s) {sorted(unknown)}; known: {known}")
            return cls(**target)
        raise TypeError(
            f"target={target!r} must be a CalibrationTarget, a dict such as {{'max_attn_error': 0.05}} or a string "
            "such as 'min_mass=0.95'"
        )
