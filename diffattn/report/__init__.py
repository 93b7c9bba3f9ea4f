"""Measurement: timing, bounds (every speedup bound, computed in `bounds` only), targets, and speed/quality
reports. The benchmark drivers (kernel, end-to-end, FreeSwim, compile report, GPU check) are in
`diffattn.report.bench`, which nothing here imports but the re-exports kept for the README's paths
(`kernel_bench`, `e2e_bench`).

The timing protocol behind every printed speedup is `timing` (warm-up, interleaved rounds, median [min-max],
the speedup beside its bounds and in words). ``diffattn.report.compare(pipe, configs, prompts, seeds, ...)``:
dense vs method configs (speed beside bounds, quality vs dense, report files);
``diffattn.report.evaluate(...)``: FID / CLIP / scorer over a prompt list, data-parallel under torchrun.
"""

from .bounds import GNABounds, MethodBounds, end_to_end_bounds, gna_bounds, method_bounds
from .compare import compare
from .evaluate import evaluate
from .runner import RunConfig, load_configs, load_prompts
from .targets import Target, check_target, check_targets, target_lines
from .timing import (
    Speedup,
    Spread,
    TimingSummary,
    interleaved_rounds,
    load_average,
    speedup_fields,
    synchronizer,
    time_round_robin,
)

__all__ = [
    "GNABounds",
    "MethodBounds",
    "RunConfig",
    "Speedup",
    "Spread",
    "Target",
    "TimingSummary",
    "check_target",
    "check_targets",
    "compare",
    "end_to_end_bounds",
    "evaluate",
    "gna_bounds",
    "interleaved_rounds",
    "load_average",
    "load_configs",
    "load_prompts",
    "method_bounds",
    "speedup_fields",
    "synchronizer",
    "target_lines",
    "time_round_robin",
]
