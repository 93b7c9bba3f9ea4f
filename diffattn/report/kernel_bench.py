"""Kept for the documented import path (README): the kernel benchmark lives in `diffattn.report.bench.kernel`."""

from .bench.kernel import *  # noqa: F403
from .bench.kernel import (  # noqa: F401  (the names scripts and tests used from this path)
    build_method_cases,
    log,
    method_markdown,
    report_markdown,
    run_benchmark,
    run_method_case,
)
