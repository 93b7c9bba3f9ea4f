"""Calibration: per self-attention module and stretch of denoising steps, the cheapest attention that keeps a
quality target, found from one dense run over a few inputs (`calibrate`), as a `Plan` that
``apply_attention(pipe, plan)`` installs. See docs/calibrate.md.

How: `probe.Probe` (installed with `apply_attention`) returns dense attention and measures every candidate of
`candidates` on a sample of each call's queries (`measure`: kept mass and output error, exact); `select` turns the
measurements into a choice per (module, bucket); `run` drives it; `verify` compares the plan with the uniform
configuration of the same predicted bound through `diffattn.report.compare`.
"""

from ..methods.routed import Bucket, ModelSignature, Plan, PlanEntry, PlanMethod
from .run import calibrate
from .target import CalibrationTarget

__all__ = ["Bucket", "CalibrationTarget", "ModelSignature", "Plan", "PlanEntry", "PlanMethod", "calibrate"]
