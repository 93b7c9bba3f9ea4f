"""Measurement: timing, bounds, targets, benchmarks and (later) speed/quality reports."""

from .bounds import GNABounds, MethodBounds, gna_bounds, method_bounds
from .targets import Target, check_target, check_targets, target_lines
from .timing import TimingSummary, speedup_fields, synchronizer, time_round_robin

__all__ = [
    "GNABounds",
    "MethodBounds",
    "Target",
    "TimingSummary",
    "check_target",
    "check_targets",
    "gna_bounds",
    "method_bounds",
    "speedup_fields",
    "synchronizer",
    "target_lines",
    "time_round_robin",
]
