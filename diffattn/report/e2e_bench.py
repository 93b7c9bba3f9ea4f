"""Kept for the documented import path (README): the end-to-end benchmark lives in `diffattn.report.bench.e2e`."""

from .bench.e2e import *  # noqa: F403
from .bench.e2e import (  # noqa: F401  (the names scripts and tests used from this path)
    DTYPES,
    GOAL,
    METHODS,
    memory_growth,
    memory_rows,
    method_configs,
    report_markdown,
    run_e2e,
)
